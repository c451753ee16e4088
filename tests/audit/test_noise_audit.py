"""Noise amplification measured on the tiny config, against the reference's claims and maths."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dpfedlora.audit.noise import audit_noise
from tests.helpers import TINY, tiny_cfg

METHODS = ["fedit", "ffa", "fedsb", "rolora"]


@pytest.fixture(scope="module")
def rows():
    cfg = tiny_cfg("train.lr=0.5", "data.num_clients=2")
    return audit_noise(
        cfg, methods=METHODS, local_steps=[1, 6], ranks=[4], noise_multipliers=[1.0], progress=False
    )


def _get(rows, method, steps):
    return next(r for r in rows if r["method"] == method and r["local_steps"] == steps)


def test_one_step_linear_methods_have_no_nonlinear_noise(rows):
    for m in ("ffa", "fedsb", "rolora"):
        r = _get(rows, m, 1)
        assert r["linear_noise_norm"] > 0
        # zero up to float32 round-off, relative to the linear part
        assert r["nonlinear_noise_norm"] < 1e-5 * r["linear_noise_norm"], m
    fedit = _get(rows, "fedit", 1)
    assert fedit["nonlinear_noise_norm"] > 1e-2 * fedit["linear_noise_norm"]


def test_several_steps_fedit_nonlinear_is_largest(rows):
    non = {m: _get(rows, m, 6)["nonlinear_noise_norm"] for m in METHODS}
    assert max(non, key=non.get) == "fedit"
    assert all(non[m] > 0 for m in METHODS)  # gradients now depend on earlier noise
    # and fedit's grows fastest with local steps
    growth = {m: non[m] / max(_get(rows, m, 1)["nonlinear_noise_norm"], 1e-30) for m in METHODS}
    assert (
        _get(rows, "fedit", 6)["nonlinear_to_linear"]
        > _get(rows, "fedit", 1)["nonlinear_to_linear"]
    )
    assert growth["fedit"] > 1


def test_measured_matches_closed_form(rows):
    # one client, first round: linear noise norm vs sqrt(E‖·‖²) (a single draw: 25 % tolerance)
    for m in METHODS:
        r = _get(rows, m, 1)
        assert r["client0"]["linear_noise_norm"] == pytest.approx(
            r["predicted_client0_linear"], rel=0.25
        )
    f = _get(rows, "fedit", 6)
    assert f["client0"]["nonlinear_noise_norm"] == pytest.approx(
        f["predicted_client0_nonlinear"], rel=0.5
    )


def test_cli_json_and_outputs(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpfedlora",
            "audit",
            "noise",
            str(TINY),
            "--methods",
            "ffa,fedsb",
            "--local-steps",
            "1,2",
            "--set",
            "data.num_clients=2",
            "--set",
            "train.lr=0.5",
            "--json",
            "--out",
            str(tmp_path),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(data) == {"ffa", "fedsb"}
    for entry in data.values():
        for key in ("signal_norm", "linear_noise_norm", "nonlinear_noise_norm", "snr"):
            assert key in entry
        assert len(entry["settings"]) == 2
    assert "| ffa | 1 |" in (tmp_path / "noise_audit.md").read_text()
    assert (tmp_path / "plots" / "noise_vs_local_steps.png").exists()
