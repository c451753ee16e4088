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
