"""Ctrl-C / SIGTERM stop at a safe point; SIGKILL at random moments never under-counts ε."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from accounting import Ledger
from tests.helpers import TINY

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _cmd(out, *extra):
    return [
        sys.executable,
        "-m",
        "dpfedlora",
        "run",
        str(TINY),
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_resume_continues(tmp_path, sig):
    out = tmp_path / "r"
    proc = subprocess.Popen(
        _cmd(out, "--set", "server.rounds=4", "--set", "train.local_steps=10"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    for line in proc.stdout:  # wait until round 1 is done, then interrupt round 2
        if line.startswith("round 1/4"):
            break
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    msg = [x for x in rest.splitlines() if x.startswith("interrupted")]
    assert msg and f"({sig.name})" in msg[0] and "`--resume` continues from round" in msg[0]
    assert "stays counted" in msg[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_reason"] == "interrupted"
    done = summary["rounds_completed"]
    assert 1 <= done < 4
    res = subprocess.run(
        _cmd(
            out,
            "--set",
            "server.rounds=4",
            "--set",
            "train.local_steps=10",
            "--resume",
            "--set",
            "server.rounds=4",
        ),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 4


@pytest.mark.parametrize("how", ["SIGUSR1", "PAUSE file"])
def test_pause_finishes_the_round_and_loses_no_spend(tmp_path, how):
    """A pause (SIGUSR1, or a PAUSE file in the run directory) stops between rounds: resumed,
    the run records the same releases and ends in the same model as one never paused."""
    import torch

    paused, whole = tmp_path / "p", tmp_path / "w"
    args = ("--set", "server.rounds=3", "--set", "train.local_steps=5")
    proc = subprocess.Popen(
        _cmd(paused, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    for line in proc.stdout:  # round 1 is done: ask during round 2 (or just before it)
        if line.startswith("round 1/3"):
            break
    if how == "SIGUSR1":
        proc.send_signal(signal.SIGUSR1)
    else:
        (paused / "PAUSE").touch()
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    msg = [x for x in rest.splitlines() if x.startswith("paused before round")]
    assert msg and "nothing spent is lost" in msg[0], rest
    summary = json.loads((paused / "summary.json").read_text())
    assert summary["stopped_reason"] == "paused"
    assert 1 <= summary["rounds_completed"] < 3
    assert not (paused / "PAUSE").exists()  # taken when honoured
    if how == "SIGUSR1":
        return  # the same pause as the file's; resuming it is checked once, below
    for out, extra in ((paused, ("--resume",)), (whole, ())):
        res = subprocess.run(
            _cmd(out, *args, *extra), capture_output=True, text=True, env=ENV, timeout=600
        )
        assert res.returncode == 0, res.stderr
        assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 3
    ledgers = [Ledger(out / "ledger.jsonl", accountant="fastpld") for out in (paused, whole)]
    assert ledgers[0].epsilons(delta=1e-5) == ledgers[1].epsilons(delta=1e-5)
    states = [torch.load(out / "checkpoint" / "final_state.pt") for out in (paused, whole)]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_under_counts(tmp_path):
    over = [
        "--set",
        "server.rounds=3",
        "--set",
        "train.local_steps=2",
        "--set",
        "privacy.noise_multiplier=1.0",
        # σ given and no target: no budget cap, so over-counted rounds still train and the run
        # completes; ε may only grow
        "--set",
        "privacy.target_epsilon=null",
    ]
    t0 = time.perf_counter()
    subprocess.run(_cmd(tmp_path / "straight", *over), check=True, env=ENV, capture_output=True)
    full = time.perf_counter() - t0
    truth = Ledger(tmp_path / "straight" / "ledger.jsonl").epsilons(delta=1e-5)
    out = tmp_path / "killed"
    rng = random.Random(0)
    for _ in range(14):  # kills at random moments (CI time: each costs a process start)
        proc = subprocess.Popen(
            _cmd(out, *over, "--resume"),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(timeout=rng.uniform(0.3, full))
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no handler runs
            proc.wait()
        if (out / "ledger.jsonl").exists():
            Ledger(out / "ledger.jsonl")  # parses after every kill (a torn last line is allowed)
    res = subprocess.run(_cmd(out, *over, "--resume"), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 3 and summary["stopped_reason"] == "completed"
    eps = Ledger(out / "ledger.jsonl").epsilons(delta=1e-5)
    for cid, e in truth.items():
        assert eps[cid] >= e - 1e-12, (cid, eps[cid], e)
