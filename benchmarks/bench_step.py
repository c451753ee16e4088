"""One DP-SGD local step vs one non-private step, side by side, on the tiny config.

Both engines train the same model with the same Poisson batches; steps are interleaved
(plain, DP, plain, DP, ...) so that load on the shared machine hits both alike. Reports median
milliseconds per step and the ratio, per method, plus the wall time per round of a full run.

    .venv/bin/python benchmarks/bench_step.py [--methods ffa,fedit,fedsb,full] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _engine import TINY, prepared_engine

from dpfedlora.config import load_config
from dpfedlora.federation import run
from dpfedlora.noise import SeededNoise


def time_steps(method: str, steps: int, overrides: list[str]) -> tuple[float, float]:
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    engines = {}
    for mode in ("plain", "dp"):
        extra = ["privacy.mode=none"] if mode == "plain" else ["privacy.noise_multiplier=1.0"]
        engine, params, client = prepared_engine([f"method.name={method}", *overrides, *extra])
        opt = torch.optim.AdamW(params, lr=1e-3)
        if mode == "dp":
            opt = engine.dp_optimizer(opt, SeededNoise(0, "bench"), noise_multiplier=1.0)
        engines[mode] = (engine, opt, params, client)
    g = torch.Generator().manual_seed(0)
    for i in range(steps + 3):
        client = engines["plain"][3]
        idx = torch.nonzero(torch.rand(len(client.data), generator=g) < client.sampling_rate)
        batch = client.data.subset(idx.flatten())
        for mode in ("plain", "dp"):
            engine, opt, params, _ = engines[mode]
            t0 = time.perf_counter()
            engine.step(opt, batch, params)
            if i >= 3:  # warm-up
                times[mode].append(time.perf_counter() - t0)
    return statistics.median(times["plain"]), statistics.median(times["dp"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="ffa,fedit,fedsb,full")
    p.add_argument("--steps", type=int, default=30, help="timed steps per engine")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: least noisy)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"tiny config, batch 32 (Poisson), {args.threads} thread(s), median of {args.steps}")
    for m in args.methods.split(","):
        plain, dp = time_steps(m, args.steps, [])
        print(
            f"{m:>8}: plain {plain * 1e3:6.1f} ms/step, DP {dp * 1e3:6.1f} ms/step, "
            f"DP/plain {dp / plain:4.2f}x"
        )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(TINY, ["method.name=ffa", "server.rounds=3"])
        t0 = time.perf_counter()
        s = run(cfg, Path(tmp) / "r", progress=False, log=lambda s: None)
        print(
            f"ffa tiny run: {s['seconds_per_round']:.2f} s/round over {s['rounds_completed']} "
            f"rounds (4 clients x {s['clients'][0]['steps_per_round']} steps, with evaluation); "
            f"whole run incl. set-up and σ calibration {time.perf_counter() - t0:.1f} s"
        )


if __name__ == "__main__":
    main()
