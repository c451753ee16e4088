"""Round wall time of a loopback Flower deployment against the in-process simulator, side by
side in one run, on the same config and seed (the results are checked equal).

    .venv/bin/python benchmarks/bench_deploy.py configs/tiny.yaml --supernodes 2
    .venv/bin/python benchmarks/bench_deploy.py configs/quickstart.yaml --supernodes 2

Prints, per run, the seconds of every round (from ``metrics.jsonl``: broadcast to aggregate and
evaluation), the median, the set-up time, and the deployed/in-process ratio. The first deployed
round includes nothing of the workers' start (they start when the server asks for the shards).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rounds(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--supernodes", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    from dpfedlora.config import load_config
    from dpfedlora.deploy.local import LocalFederation
    from dpfedlora.federation import run

    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sim = run(cfg, tmp / "sim", progress=False, log=lambda _: None)
        sim_total = time.perf_counter() - t0
        t0 = time.perf_counter()
        with LocalFederation(tmp / "fed", args.supernodes, cfg.data.num_clients,
                             log=lambda _: None) as fed:  # fmt: skip
            up = time.perf_counter() - t0
            dep = fed.run(args.config, tmp / "dep", overrides=args.overrides)
        dep_total = time.perf_counter() - t0
        # torch threads differ (each node gets its share of the cores), so float sums may
        # differ in the last bits; the ε must be identical
        gap = max(abs(dep["final"][k] - v) for k, v in sim["final"].items())
        same = gap <= 1e-6 and dep["max_epsilon"] == sim["max_epsilon"]
        a, b = _rounds(tmp / "sim"), _rounds(tmp / "dep")
    print(f"config {args.config} ({cfg.data.num_clients} clients, {args.supernodes} SuperNodes)")
    print(f"  in-process: rounds {', '.join(f'{x:.2f}' for x in a)} s; median "
          f"{statistics.median(a):.2f} s; whole run {sim_total:.1f} s")  # fmt: skip
    print(f"  deployed:   rounds {', '.join(f'{x:.2f}' for x in b)} s; median "
          f"{statistics.median(b):.2f} s; whole command {dep_total:.1f} s "
          f"(federation up in {up:.1f} s)")  # fmt: skip
    print(
        f"  median round, deployed / in-process: {statistics.median(b) / statistics.median(a):.2f}x"
    )
    print(f"  same ε: {dep['max_epsilon'] == sim['max_epsilon']}; final metrics differ by at most "
          f"{gap:.2e}")  # fmt: skip
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
