"""One-run privacy audit on the tiny config: the lower bound never exceeds the ledger's upper
bound at ε = 4, and the attack is strong enough to certify ε > 2 when noise is switched off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from accounting import make_accountant
from accounting.audit import one_run_epsilon_lower_bound
from dpfedlora.audit.privacy import audit_privacy
from tests.helpers import TINY, tiny_cfg


def _recount(out, guesses: int) -> int:
    """Correct "in" guesses recomputed from the saved per-canary scores and truth."""
    rows = (out / "canary_scores.csv").read_text().splitlines()[1:]
    scored = sorted(
        ((float(r.split(",")[2]), int(r.split(",")[1])) for r in rows), key=lambda t: -t[0]
    )
    return sum(inc for _, inc in scored[:guesses])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lower_bound_below_upper_at_eps4(tmp_path, seed):
    cfg = tiny_cfg(f"seed={seed}", "privacy.target_epsilon=4", "method.name=full")
    r = audit_privacy(cfg, tmp_path / "a", canaries=1000, guesses=100, steps=40)
    assert 3.9 <= r["epsilon_upper"] <= 4.0  # calibrated to the budget
    assert r["epsilon_lower"] <= r["epsilon_upper"]
    # the count and the bound follow from the saved scores (an independent recount)
    assert r["guesses"] == 100 and r["correct_guesses"] == _recount(tmp_path / "a", 100)
    assert r["epsilon_lower"] == one_run_epsilon_lower_bound(
        canaries=1000, guesses=100, correct=r["correct_guesses"], delta=cfg.privacy.delta
    )


def test_without_noise_lower_bound_exceeds_2(tmp_path):
    cfg = tiny_cfg("method.name=full")
    r = audit_privacy(
        cfg, tmp_path / "a", canaries=1000, guesses=100, steps=40, unsafe_no_noise=True
    )
    assert r["epsilon_lower"] > 2.0
    assert r["epsilon_upper"] == float("inf")  # the ledger records the run as non-private
    assert r["noise_multiplier"] == 0.0


def test_cli_json(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpfedlora",
            "audit",
            "privacy",
            str(TINY),
            "--canaries",
            "200",
            "--set",
            "privacy.target_epsilon=4",
            "--json",
            "--out",
            str(tmp_path / "a"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["canaries"] == 200 and data["confidence"] == 0.95 and data["guesses"] == 20
    assert data["correct_guesses"] == _recount(tmp_path / "a", data["guesses"])
    # the upper bound is the accountant's for the release the audit ran (σ, q, steps)
    from accounting import dpsgd_event

    event = dpsgd_event(
        noise_multiplier=data["noise_multiplier"],
        sampling_rate=data["sampling_rate"],
        steps=data["steps"],
    )
    upper = make_accountant("fastpld").compose(event).epsilon(data["delta"])
    assert data["epsilon_upper"] == pytest.approx(upper, rel=1e-6) and upper <= 4.0
    assert (
        json.loads((tmp_path / "a" / "audit.json").read_text())["epsilon_lower"]
        == (data["epsilon_lower"])
    )
