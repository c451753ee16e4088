"""The GPU benchmark's CPU size runs as a test (the script itself is tested in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT


def test_bench_gpu_tiny_on_cpu():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu",
         "--size", "tiny", "--steps", "2", "--json"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(x) for x in out.stdout.strip().splitlines()]
    assert [r["run"] for r in rows] == ["non-private", "DP hooks", "DP ghost"]
    for r in rows:
        assert r["device"] == "cpu" and r["tokens_per_s"] > 0 and r["peak_mb"] > 0
    assert all(r["ratio_to_non_private"] > 0 for r in rows[1:])
