"""The curious server of ``test_curious_server.py`` on a real loopback Flower federation: the
owners' contracts are in their SuperNodes' node configs, and the server's config asks for more.
Slow (a SuperLink, two SuperNodes and their workers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import TINY

pytestmark = pytest.mark.slow
pytest.importorskip("flwr")

CONTRACT = {"epsilon-budget": 3.0, "delta": 1e-5, "max-clip-norm": 1.0,
            "accountant": "fastpld", "allow-non-private": False}  # fmt: skip


def _quiet(_line: str) -> None:
    pass


def _node_log(deployment: Path, i: int) -> list[dict]:
    path = deployment / "nodes" / f"node-{i}" / "node.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _ledger(deployment: Path, i: int) -> bytes:
    path = deployment / "nodes" / f"node-{i}" / "ledger.jsonl"
    return path.read_bytes() if path.exists() else b""


def test_real_nodes_refuse_what_their_owners_did_not_agree_to(tmp_path):
    from dpfedlora.deploy.local import DeployLaunchError, LocalFederation

    deployment = tmp_path / "deployment"
    contracts = {0: CONTRACT, 1: CONTRACT}
    with LocalFederation(deployment, 2, 4, log=_quiet, contracts=contracts) as fed:
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
