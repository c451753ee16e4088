"""Cost of secure noise: DP steps with seeded vs secure noise, side by side in one run.

Seeded noise is torch's Mersenne Twister (what simulations use); secure noise is a ChaCha20
stream keyed from OS entropy with Box–Muller in float64 and the sum-of-four-draws mitigation
(dpfedlora.noise). Steps are interleaved (seeded, secure, seeded, ...) on the same Poisson
batches so that machine load hits both alike. Also times the noise draw alone for p numbers.

    .venv/bin/python benchmarks/bench_noise.py [--methods ffa,full] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _engine import prepared_engine

from dpfedlora.noise import SecureNoise, SeededNoise

SOURCES = {"seeded": lambda: SeededNoise(0, "bench"), "secure": SecureNoise}


def time_steps(method: str, steps: int) -> dict[str, float]:
    engine, params, client = prepared_engine(
        [f"method.name={method}", "privacy.noise_multiplier=1.0"]
    )
    opts = {
        k: engine.dp_optimizer(torch.optim.SGD(params, lr=1e-3), make(), noise_multiplier=1.0)
        for k, make in SOURCES.items()
    }
    times: dict[str, list[float]] = {k: [] for k in SOURCES}
    g = torch.Generator().manual_seed(0)
    for i in range(steps + 3):
        idx = torch.nonzero(torch.rand(len(client.data), generator=g) < client.sampling_rate)
        batch = client.data.subset(idx.flatten())
        for k, opt in opts.items():
            t0 = time.perf_counter()
            engine.step(opt, batch, params)
            if i >= 3:  # warm-up
                times[k].append(time.perf_counter() - t0)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["numel"] = sum(p.numel() for p in params)
    return out


def time_draws(numel: int, repeats: int) -> dict[str, float]:
    like = torch.zeros(1)
    sources = {k: make() for k, make in SOURCES.items()}
    times: dict[str, list[float]] = {k: [] for k in SOURCES}
    for _ in range(repeats):
        for k, src in sources.items():
            t0 = time.perf_counter()
            src.normal((numel,), std=1.0, like=like)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="ffa,full")
    p.add_argument("--steps", type=int, default=30, help="timed steps per source")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: least noisy)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"tiny config, batch 32 (Poisson), {args.threads} thread(s), median of {args.steps}")
    print("| what | numbers noised | seeded ms | secure ms | secure/seeded |")
    print("|---|---|---|---|---|")
    for m in args.methods.split(","):
        t = time_steps(m, args.steps)
        print(
            f"| DP step, {m} | {t['numel']:,} | {t['seeded'] * 1e3:.2f} | "
            f"{t['secure'] * 1e3:.2f} | {t['secure'] / t['seeded']:.2f}x |"
        )
    for numel in (10_000, 1_000_000, 10_000_000):
        t = time_draws(numel, 5 if numel > 1e6 else 20)
        print(
            f"| noise draw alone | {numel:,} | {t['seeded'] * 1e3:.2f} | {t['secure'] * 1e3:.2f} "
            f"| {t['secure'] / t['seeded']:.2f}x |"
        )


if __name__ == "__main__":
    main()
