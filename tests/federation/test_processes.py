"""Every client in its own process, messages as bytes: the same run, bit for bit."""

from __future__ import annotations

import json

import torch

from accounting import Ledger
from dpfedlora.federation import Federation, run
from dpfedlora.federation.processes import ProcessClients
from tests.helpers import tiny_cfg


def _quiet(_line: str) -> None:
    pass


def test_process_per_client_run_equals_the_in_process_run(tmp_path):
    cfg = tiny_cfg()  # 4 clients, 2 rounds, ε = 3 (PRV), seeded noise
    local = run(cfg, tmp_path / "local", progress=False, log=_quiet)
    with ProcessClients(cfg, tmp_path / "owners") as remote:
        summary = Federation(cfg, tmp_path / "remote", clients=remote, log=_quiet).run(
            progress=False
        )
    a = torch.load(tmp_path / "local" / "checkpoint" / "final_state.pt")
    b = torch.load(tmp_path / "remote" / "checkpoint" / "final_state.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the server's mirror, built from replies, equals the in-process ledger byte for byte
    ledger = (tmp_path / "local" / "ledger.jsonl").read_text()
    assert (tmp_path / "remote" / "ledger.jsonl").read_text() == ledger
    assert len(ledger.splitlines()) == 4 * 2
    # each data owner holds exactly its own records
    for cid, path in remote.ledgers.items():
        own = Ledger(path, accountant="prv")
        assert own.clients == [cid] and len(own) == 2
    rows = [
        [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("local", "remote")
    ]
    for ra, rb in zip(*rows):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    assert summary["final"] == local["final"] and summary["max_epsilon"] == local["max_epsilon"]


def test_a_private_client_without_a_budget_refuses_to_train():
    from dpfedlora.wire import Broadcast
    from tests.helpers import tiny_setup

    setup = tiny_setup("privacy.accountant=rdp")
    client = setup.clients[0]
    view = setup.method.client_view(setup.method.init_state(), client.spec, 1)
    before = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    try:
        client.train(Broadcast(1, client.spec.cid, view, 1.0))
    except RuntimeError as exc:
        assert "no budget" in str(exc)
    else:  # pragma: no cover - the refusal is the point
        raise AssertionError("a private client trained without recording its release")
    after = dict(setup.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_remote_clients_refuse_a_private_init_before_anything_is_written(tmp_path):
    import pytest

    from dpfedlora.federation import RunError

    class Mirrors:
        mirrors = True

        def train(self, broadcast):  # pragma: no cover - never reached
            raise AssertionError

        def close(self):
            pass

    cfg = tiny_cfg("method.name=fedsb", "method.init=private")
    fed = Federation(cfg, tmp_path / "r", clients=Mirrors(), log=_quiet)
    with pytest.raises(RunError, match="in-process clients"):
        fed.run(progress=False)
    assert not (tmp_path / "r").exists()
