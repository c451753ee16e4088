"""Faults in a loopback Flower deployment: a SuperNode killed mid-round and restarted, and the
launcher interrupted. Slow; a module of its own so that pytest-xdist runs it beside the
equivalence tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.deploy.test_local_deployment import _assert_nothing_left, _by_client, _quiet, _records
from tests.helpers import TINY

pytest.importorskip("flwr")
pytestmark = pytest.mark.slow


def test_a_killed_supernode_misses_rounds_and_continues_with_its_own_ledger(tmp_path):
    """SIGKILL node 1 while it trains round 2; the run goes on without it after the round
    timeout; restarted (same key, same state directory), it serves later rounds and its ledger
    keeps every release it recorded. The server's mirror never under-counts."""
    from dpfedlora.deploy.local import LocalFederation

    deployment = tmp_path / "deployment"
    ledger1 = deployment / "nodes" / "node-1" / "ledger.jsonl"
    # enough rounds that the run outlasts the restart (with node authentication the SuperLink
    # refuses the node's key for about a minute after the kill)
    rounds = 16
    overrides = [f"server.rounds={rounds}"]
    with LocalFederation(deployment, 2, 4, log=_quiet) as fed:
        result: dict = {}
        runner = threading.Thread(
            target=lambda: result.update(
                fed.run(TINY, tmp_path / "dep", overrides=overrides, round_timeout=20)
            )
        )
        runner.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not any(
            r["round"] == 2 for r in (_records(ledger1) if ledger1.exists() else [])
        ):
            time.sleep(0.05)
        fed.kill_node(1)  # mid-round 2: its release is recorded, its training under way
        fed.restart_node(1)
        back = len(_records(tmp_path / "dep" / "metrics.jsonl"))  # rounds done by then
        runner.join(timeout=1200)
        assert not runner.is_alive()
    assert result["rounds_completed"] == rounds
    missing = {(f["round"], f["cid"]) for f in result["faulty_clients"]}
    assert {(2, "1"), (2, "3")} <= missing  # the summary names who was missing
    rows = _records(tmp_path / "dep" / "metrics.jsonl")
    assert back + 2 < rounds, "the restart outlasted the run; raise `rounds`"
    # the round in flight when the node came back may have been sent before: skip it
    assert any(r["clients"] == 4 for r in rows[back + 1 :]), "the restarted node serves again"
    own = _by_client(_records(ledger1))
    mirror = _by_client(_records(tmp_path / "dep" / "ledger.jsonl"))
    for cid in ("1", "3"):
        seen = [r["round"] for r in own[cid]]
        assert seen == sorted(set(seen)), "one record per round, never lost"
        assert 2 in seen and seen[-1] > back + 1
        # every release the owner recorded is in the server's mirror (never under-counted)
        assert {r["round"] for r in own[cid]} <= {r["round"] for r in mirror[cid]}
    for cid in ("0", "2"):
        assert [r["round"] for r in mirror[cid]] == list(range(1, rounds + 1))
    _assert_nothing_left(deployment)


def test_ctrl_c_stops_every_process_the_command_started(tmp_path):
    """SIGINT to ``dpfedlora deploy local`` mid-run: exit 130, nothing left running, and every
    release a node recorded stays in its ledger."""
    out = tmp_path / "dep"
    cmd = [str(Path(sys.executable).with_name("dpfedlora")), "deploy", "local", str(TINY),
           "--out", str(out), "--set", "server.rounds=20"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ledger = out / "deployment" / "nodes" / "node-0" / "ledger.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (ledger.exists() and ledger.read_text()):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert _records(ledger), "the node's recorded releases stay"
    _assert_nothing_left(out / "deployment")
