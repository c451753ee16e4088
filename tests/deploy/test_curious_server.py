"""A curious (then malicious) server against data owners that hold their own contract.

The owners run in their own processes (:class:`ProcessClients`, the same
:class:`~dpfedlora.client.node.Node` a Flower SuperNode's worker runs). The server asks for
releases outside the owner's contract or budget; every one must be refused with its reason
code, leave the owner's ledger byte-identical, and read no record (the node's own log counts
the records each request read). The last test plays the same server on a real loopback
Flower federation (slow: ``make test-slow``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from dpfedlora.client.contract import REASONS, OwnerContract
from dpfedlora.config import to_dict
from dpfedlora.federation.processes import ProcessClients
from dpfedlora.wire import Broadcast, Reply
from tests.helpers import TINY, tiny_cfg, tiny_setup

# the owners' contract: what tiny.yaml asks for, and no more
CONTRACT = OwnerContract(epsilon_budget=3.0, delta=1e-5, max_clip_norm=1.0,
                         accountant="fastpld", noise="config")  # fmt: skip


@pytest.fixture(scope="module")
def owners(tmp_path_factory):
    cfg = tiny_cfg()
    workdir = tmp_path_factory.mktemp("owners")
    with ProcessClients(cfg, workdir, contract=CONTRACT, cids=["1"]) as pc:
        yield pc, workdir


@pytest.fixture(scope="module")
def server():
    """What the server knows: the method, the model's shapes, a client's view."""
    setup = tiny_setup()
    spec = setup.clients[1].spec
    return setup, setup.method.client_view(setup.method.init_state(), spec, 1)


def _request(**privacy):
    data = to_dict(tiny_cfg())
    data["privacy"].update(privacy)
    return data


def _state(workdir, cid="1"):
    """(ledger bytes, the node's log entries) of owner ``cid``."""
    ledger = workdir / f"client-{cid}" / "ledger.jsonl"
    log = workdir / f"client-{cid}" / "node.jsonl"
    entries = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return (ledger.read_bytes() if ledger.exists() else b""), entries


def _assert_refused(owners, reply: Reply, code: str, before: bytes) -> None:
    pc, workdir = owners
    assert code in REASONS
    assert reply.status == "skipped" and reply.error == code, (reply.status, reply.error)
    assert reply.payload == {} and reply.event is None
    ledger, log = _state(workdir)
    assert ledger == before  # nothing written to the owner's ledger
    assert log[-1]["reason"] == code and log[-1]["records_read"] == 0  # no record read


MECHANISMS = {
    "mode none": ({"mode": "none"}, "contract:non_private"),
    "epsilon inf": ({"target_epsilon": math.inf, "noise_multiplier": None},
                    "contract:non_private"),
    "delta 0.5": ({"delta": 0.5}, "contract:delta"),
    "delta 1 - 1e-9": ({"delta": 1 - 1e-9}, "contract:delta"),
    "delta above the owner's": ({"delta": 1e-4}, "contract:delta"),
    "clip norm above the contract": ({"clip_norm": 5.0}, "contract:clip_norm"),
    "another accountant": ({"accountant": "rdp"}, "contract:accountant"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MECHANISMS))
def test_a_mechanism_outside_the_contract_is_refused(owners, server, name):
    privacy, code = MECHANISMS[name]
    pc, workdir = owners
    _, view = server
    before, _ = _state(workdir)
    reply = pc.train(Broadcast(1, "1", view, 1.0), request=_request(**privacy))
    _assert_refused(owners, reply, code, before)


def _tampered(server, how: str) -> dict[str, torch.Tensor]:
    setup, view = server
    view = {k: v.clone() for k, v in view.items()}
    name = sorted(view)[0]
    if how == "frozen base weight":
        frozen = next(n for n, p in setup.model.named_parameters() if "embeddings" in n)
        view[frozen] = dict(setup.model.named_parameters())[frozen].detach().clone()
    elif how == "unknown name":
        view["evil.weight"] = torch.zeros(3)
    elif how == "wrong shape":
        view[name] = torch.zeros(*[d + 1 for d in view[name].shape])
    elif how == "NaN":
        view[name][0] = math.nan
    elif how == "wrong dtype":
        view[name] = view[name].to(torch.float64)
    return view


BROADCASTS = {
    "frozen base weight": "broadcast:unknown_tensor",
    "unknown name": "broadcast:unknown_tensor",
    "wrong shape": "broadcast:shape",
    "NaN": "broadcast:non_finite",
    "wrong dtype": "broadcast:dtype",
}


@pytest.mark.parametrize("how", list(BROADCASTS))
def test_a_broadcast_outside_the_method_is_refused(owners, server, how):
    pc, workdir = owners
    before, _ = _state(workdir)
    reply = pc.train(Broadcast(1, "1", _tampered(server, how), 1.0))
    _assert_refused(owners, reply, BROADCASTS[how], before)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.nan, math.inf])
def test_a_sigma_that_is_no_noise_is_refused(owners, server, sigma):
    pc, workdir = owners
    before, _ = _state(workdir)
    reply = pc.train(Broadcast(1, "1", server[1], sigma))
    _assert_refused(owners, reply, "contract:noise_multiplier", before)


@pytest.mark.parametrize(
    "train, sigma",
    [({}, 0.1),  # the review's σ = 0.1: ε ≈ 92 at δ = 1e-5, far above the owner's 3
     ({"sampling_rate": 1.0, "local_steps": 5000}, 1.0)],  # q and steps beyond the budget
)  # fmt: skip
def test_q_steps_or_sigma_beyond_the_budget_are_refused(owners, server, train, sigma):
    pc, workdir = owners
    before, _ = _state(workdir)
    request = _request()
    request["train"].update(train)
    reply = pc.train(Broadcast(1, "1", server[1], sigma), request=request)
    _assert_refused(owners, reply, "budget", before)
    assert reply.metrics["planned_epsilon"] > 3.0 and reply.metrics["budget"] == 3.0


def test_describe_returns_only_what_the_owner_declares_public(owners):
    pc, workdir = owners
    got = pc.describe("1")
    assert got == {"shards": [{"cid": "1", "num_examples": 240}]}  # no label counts
    _, log = _state(workdir)
    assert log[-1]["action"] == "describe" and log[-1]["records_read"] == 0
    refused = pc.describe("1", request=_request(mode="none"))
    assert refused == {"refused": "contract:non_private"}


def test_within_the_contract_the_owner_trains_and_releases_only_the_dp_output(owners, server):
    """The control: a request within the contract is trained and spent once, and its reply
    carries the payload, the event and the step count, nothing data-dependent besides."""
    pc, workdir = owners
    before, _ = _state(workdir)
    reply = pc.train(Broadcast(1, "1", server[1], 5.0))
    assert reply.status == "ok" and reply.error == "" and reply.event is not None
    assert set(reply.metrics) == {"steps"}  # no loss, batch sizes or timing by default
    ledger, log = _state(workdir)
    added = ledger[len(before) :].decode().splitlines()
    assert ledger.startswith(before) and len(added) == 1 and json.loads(added[0])["client"] == "1"
    assert log[-1]["status"] == "ok" and log[-1]["records_read"] > 0


def test_a_non_finite_per_sample_gradient_is_no_membership_oracle(tmp_path):
    """The server's crafted weights make one record's per-sample gradient non-finite (here:
    its embedding row at 1e38, the review's attack). Whether that record was sampled must not
    show: the reply is ``ok`` with a finite noised payload, and its bytes carry no text."""
    from accounting import Ledger
    from dpfedlora.client import Budget
    from dpfedlora.client.node import Node

    setup = tiny_setup()
    client = setup.clients[0]
    token = int(setup.built.model.config.vocab_size) - 1
    ids = client.data.input_ids.clone()
    ids[ids == token] = token - 1
    ids[0, 1] = token  # record 0 alone holds the poisoned token
    client.data = dataclasses.replace(client.data, input_ids=ids)
    emb = next(p for n, p in setup.model.named_parameters() if "word_embeddings" in n)
    with torch.no_grad():
        emb[token] = 1e38
    client.sampling_rate = 1.0  # record 0 is in every batch
    cfg_data = to_dict(tiny_cfg())
    node = Node(tmp_path, contract_for=lambda _r: CONTRACT, build=lambda c, k: {"0": client})
    view = setup.method.client_view(setup.method.init_state(), client.spec, 1)
    reply = node.train(cfg_data, Broadcast(1, "0", view, 5.0).to_bytes())
    assert reply.status == "ok", reply.error
    assert all(bool(torch.isfinite(t).all()) for t in reply.payload.values())
    data = reply.to_bytes()
    meta = json.loads(json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
                      ["__metadata__"]["json"])  # fmt: skip
    assert meta["error"] == "" and set(meta["metrics"]) == {"steps"}
    assert isinstance(client.budget, Budget) and len(Ledger(tmp_path / "ledger.jsonl")) == 1


def test_an_internal_failure_shows_only_its_code(tmp_path):
    """A failure after the spend is reported as ``failed:internal`` with the event (it stays
    counted), never with the exception's text."""
    from dpfedlora.client.node import Node

    setup = tiny_setup()
    client = setup.clients[0]

    def boom(*_a, **_k):
        raise RuntimeError("record 17 says: secret")

    client.trainer.train_local = boom
    node = Node(tmp_path, contract_for=lambda _r: CONTRACT, build=lambda c, k: {"0": client})
    view = setup.method.client_view(setup.method.init_state(), client.spec, 1)
    reply = node.train(to_dict(tiny_cfg()), Broadcast(1, "0", view, 5.0).to_bytes())
    assert reply.status == "failed" and reply.error == "failed:internal"
    assert reply.event is not None and b"secret" not in reply.to_bytes()


def test_the_owner_contract_is_validated_and_checks_delta_against_its_shards():
    from dpfedlora.client.contract import ContractError

    for bad in ({"delta": 0.5}, {"delta": 0.02}, {"max_clip_norm": 0.0},
                {"accountant": "nope"}, {"release": frozenset({"labels"})}):  # fmt: skip
        with pytest.raises(ContractError):
            OwnerContract(epsilon_budget=3.0, **bad)
    c = OwnerContract(epsilon_budget=3.0, delta=1e-2)
    c.check_shards([99, 500])
    with pytest.raises(ContractError, match="1/n"):
        c.check_shards([100, 500])
    # the server's raw values are read as they are: a copy cannot smuggle a different type
    raw = copy.deepcopy(to_dict(tiny_cfg()))
    raw["privacy"]["clip_norm"] = "1.0"
    assert CONTRACT.check_request(raw).reason == "contract:clip_norm"


def test_flexlora_may_restore_its_base_weights_but_never_change_them(tmp_path):
    """FlexLoRA's view carries the original base weights (its evaluation view changed them in a
    shared model); a node accepts exactly those values and refuses any other."""
    from dpfedlora.client.node import Node

    setup = tiny_setup("method.name=flexlora")
    client = setup.clients[0]
    node = Node(tmp_path, contract_for=lambda _r: CONTRACT, build=lambda c, k: {"0": client})
    cfg_data = to_dict(tiny_cfg("method.name=flexlora"))
    view = setup.method.client_view(setup.method.init_state(), client.spec, 1)
    base = setup.method.restored_names()[0]
    assert base in view
    bad = {**view, base: view[base] + 1e-3}
    reply = node.train(cfg_data, Broadcast(1, "0", bad, 5.0).to_bytes())
    assert (reply.status, reply.error) == ("skipped", "broadcast:frozen_tensor")
    assert not (tmp_path / "ledger.jsonl").exists()
    reply = node.train(cfg_data, Broadcast(1, "0", view, 5.0).to_bytes())
    assert reply.status == "ok", reply.error


# ---------------------------------------------------------------- on Flower (slow)
NODE_CONTRACT = {"epsilon-budget": 3.0, "delta": 1e-5, "max-clip-norm": 1.0,
            "accountant": "fastpld", "allow-non-private": False}  # fmt: skip


def _node_log(deployment: Path, i: int) -> list[dict]:
    path = deployment / "nodes" / f"node-{i}" / "node.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _ledger(deployment: Path, i: int) -> bytes:
    path = deployment / "nodes" / f"node-{i}" / "ledger.jsonl"
    return path.read_bytes() if path.exists() else b""


@pytest.mark.slow
def test_real_nodes_refuse_what_their_owners_did_not_agree_to(tmp_path):
    """The same curious server on a real loopback Flower federation (a SuperLink, two
    SuperNodes and their workers): the owners' contracts are in their node configs."""
    pytest.importorskip("flwr")
    from dpfedlora.deploy.local import DeployLaunchError, LocalFederation

    deployment = tmp_path / "deployment"
    contracts = {0: NODE_CONTRACT, 1: NODE_CONTRACT}
    with LocalFederation(deployment, 2, 4, log=lambda _line: None, contracts=contracts) as fed:
        # outside the contract: refused at describe, before any shard is built or read
        for n, (override, code) in enumerate(
            [
                ("privacy.mode=none", "contract:non_private"),
                ("privacy.clip_norm=5.0", "contract:clip_norm"),
            ]  # fmt: skip
        ):
            with pytest.raises(DeployLaunchError, match=code):
                fed.run(TINY, tmp_path / f"attack-{n}", overrides=[override], node_wait=120)
            for i in range(2):
                last = _node_log(deployment, i)[-1]
                assert (last["action"], last["reason"]) == ("describe", code)
                assert _ledger(deployment, i) == b""
        # within the contract's mechanism but beyond the owners' budget: every round refused
        summary = fed.run(TINY, tmp_path / "greedy", overrides=["privacy.target_epsilon=60"])
    # every owner refused round 1, so nothing was trained and the server stopped
    assert summary["stopped_reason"] == "budget_exhausted" and summary["rounds_completed"] == 0
    for i in range(2):
        trains = [e for e in _node_log(deployment, i) if e["action"] == "train"]
        assert trains and all(e["reason"] == "budget" and e["records_read"] == 0 for e in trains)
        assert _ledger(deployment, i) == b""
