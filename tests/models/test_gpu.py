"""The hybrid path on CUDA (marked gpu; skipped without CUDA): the base on the GPU in bfloat16,
client states pinned on the host, per-sample clipping exact."""

from __future__ import annotations

import pytest
import torch

from dpfedlora.federation import Federation
from tests.helpers import tiny_cfg

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_tiny_run_on_cuda_keeps_states_on_the_host(tmp_path):
    cfg = tiny_cfg("model.device=cuda", "model.dtype=bfloat16", "method.name=fedsb",
                   "train.local_steps=2", "server.rounds=1")  # fmt: skip
    fed = Federation(cfg, tmp_path / "r", log=lambda s: None)
    params = dict(fed.setup.model.named_parameters())
    assert all(p.device.type == "cuda" for p in params.values())
    state = fed.method.init_state()
    assert all(t.device.type == "cpu" and t.is_pinned() for t in state.values())
    summary = fed.run(progress=False)
    assert summary["stopped_reason"] == "completed" and summary["faulty_clients"] == []


def test_bench_gpu_1b_shape_runs():
    import subprocess
    import sys

    from tests.helpers import ROOT

    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--size", "1b",
         "--steps", "2", "--json"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
