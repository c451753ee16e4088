"""One-run privacy audit on the tiny config: the lower bound never exceeds the ledger's upper
bound at ε = 4, and the attack is strong enough to certify ε > 2 when noise is switched off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dpfedlora.audit.privacy import audit_privacy
from tests.helpers import TINY, tiny_cfg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lower_bound_below_upper_at_eps4(tmp_path, seed):
    cfg = tiny_cfg(f"seed={seed}", "privacy.target_epsilon=4", "method.name=full")
    r = audit_privacy(cfg, tmp_path / "a", canaries=1000, guesses=100, steps=40)
    assert 3.9 <= r["epsilon_upper"] <= 4.0  # calibrated to the budget
    assert r["epsilon_lower"] <= r["epsilon_upper"]
    assert r["guesses"] == 100 and 0 <= r["correct_guesses"] <= 100


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
    for key in (
        "epsilon_lower",
        "epsilon_upper",
        "confidence",
        "canaries",
        "correct_guesses",
        "guesses",
    ):
        assert key in data
    assert data["canaries"] == 200 and data["confidence"] == 0.95
    assert (tmp_path / "a" / "audit.json").exists() and (tmp_path / "a" / "ledger.jsonl").exists()
