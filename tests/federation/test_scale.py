"""The scale benchmark's smallest size, as a test: 100 clients, DP and non-private."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tests.helpers import ROOT


def test_bench_scale_smallest_size_runs_within_budget():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--clients", "100",
         "--json"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    runs = {r["mode"]: r for r in map(json.loads, out.stdout.strip().splitlines())}
    dp, plain = runs["dp"], runs["none"]
    assert dp["clients"] == plain["clients"] == 100 and dp["distinct_q"] == 1
    assert 0 < dp["max_epsilon"] <= 3.0 and math.isinf(plain["max_epsilon"])
    assert dp["accountant_used"] == "fastpld"
    assert 0 < dp["accounting_share"] < 1 and plain["accounting_s"] < 0.01  # nothing to account
    assert dp["ledger_replay_s"] > 0 and dp["peak_rss_mb"] > 0
