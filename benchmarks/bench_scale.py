"""Federations of 100, 1,000 and 10,000 simulated clients: is accounting still cheap?

The tiny config with N clients for 2 rounds, 2 local steps per client, one Poisson rate
``train.sampling_rate = 0.1`` (or, with ``--skew``, per-client rates from size-skewed shards
and ``train.batch_size = 4``), DP at ε = 3 and non-private side by side, each run in a fresh
process. Printed per run: wall seconds per round (the mean of the rounds' own timings), the
share of the run's time spent in accounting (ledger checks and writes, ε and attack-risk
queries, σ calibration), peak RSS and RSS per client, and the ``dpfedlora ledger`` replay time
of the resulting ledger.

    .venv/bin/python benchmarks/bench_scale.py                  # 100 and 1,000 clients
    .venv/bin/python benchmarks/bench_scale.py --clients 10000 --modes dp
    .venv/bin/python benchmarks/bench_scale.py --clients 1000 --skew
    .venv/bin/python benchmarks/bench_scale.py --clients 1000 --repeats 3   # median of 3 pairs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
EVAL_EXAMPLES = 1200


def overrides(clients: int, mode: str, skew: bool) -> list[str]:
    per_client = 48 if skew else 12  # q·n >= 1 at q = 0.1; batch 4 needs shards >= 4
    train = clients * per_client
    total = train + EVAL_EXAMPLES
    out = [
        f"data.num_clients={clients}",
        f"data.num_examples={total}",
        f"data.eval_fraction={EVAL_EXAMPLES / total:.6f}",
        "train.local_steps=2",
        "server.rounds=2",
        "privacy.diagnostics=false",
    ]
    out += (
        ["data.partition.size_skew=0.5", "train.batch_size=4", "train.sampling_rate=0"]
        if skew
        else ["train.sampling_rate=0.1"]
    )
    if mode == "none":
        out += ["privacy.mode=none", "privacy.target_epsilon=null"]
    return out


def _timed(cls, name: str, totals: dict[str, float]) -> None:
    original = getattr(cls, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals["accounting"] += time.perf_counter() - t0

    setattr(cls, name, wrapper)


def one_run(clients: int, mode: str, skew: bool, out: str) -> dict:
    """Runs in the child process: one federation, timed."""
    from accounting import Ledger
    from dpfedlora.config import load_config
    from dpfedlora.federation import Federation, server

    totals = {"accounting": 0.0}
    for name in ("spend", "record", "max_epsilon", "epsilons", "epsilon", "risk", "max_risk"):
        _timed(Ledger, name, totals)
    _timed(Federation, "plan_noise", totals)
    t0 = time.perf_counter()
    cfg = load_config(TINY, overrides(clients, mode, skew))
    fed = Federation(cfg, out, log=lambda s: None)
    t_setup = time.perf_counter() - t0
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1 = time.perf_counter()
    summary = fed.run(progress=False)
    t_run = time.perf_counter() - t1
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    del server
    return {
        "clients": clients,
        "mode": mode,
        "skew": skew,
        "distinct_q": len({c["sampling_rate"] for c in summary["clients"]}),
        "setup_s": t_setup,
        "run_s": t_run,
        "wall_per_round_s": sum(r["seconds"] for r in rows) / len(rows),
        "accounting_s": totals["accounting"],
        "accounting_share": totals["accounting"] / t_run,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_setup_mb": rss_setup,
        "max_epsilon": summary["max_epsilon"],
        "accountant_used": summary["accountant_used"],
    }


def replay_seconds(run_dir: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dpfedlora", "ledger", run_dir],
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--modes", nargs="+", default=["none", "dp"], choices=["none", "dp"])
    p.add_argument("--skew", action="store_true", help="per-client rates (size-skewed shards)")
    p.add_argument("--json", action="store_true", help="one JSON line per run instead of text")
    p.add_argument(
        "--repeats", type=int, default=1, help="runs per mode, alternating; the ratio is of medians"
    )
    p.add_argument("--child", nargs=3, metavar=("N", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        n, mode, out = args.child
        print(json.dumps(one_run(int(n), mode, args.skew, out)))
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for n in args.clients:
        results: dict[str, list[dict]] = {m: [] for m in args.modes}
        # modes alternate (none, dp, none, dp, ...) so that load on a shared machine hits both
        for _ in range(args.repeats):
            for mode in args.modes:
                r = child_run(n, mode, args.skew, env)
                results[mode].append(r)
                if args.json:
                    print(json.dumps(r), flush=True)
                else:
                    print(describe(n, mode, args.skew, r), flush=True)
        if set(results) == {"none", "dp"} and not args.json:
            walls = {m: [r["wall_per_round_s"] for r in rs] for m, rs in results.items()}
            ratio = statistics.median(walls["dp"]) / statistics.median(walls["none"])
            pairs = [d / p for d, p in zip(walls["dp"], walls["none"])]
            spread = f" (per pair {min(pairs):.2f}-{max(pairs):.2f}x)" if len(pairs) > 1 else ""
            print(
                f"{n:>6} clients: DP / non-private wall per round = {ratio:.2f}x, median of "
                f"{args.repeats}{spread}",
                flush=True,
            )


def child_run(n: int, mode: str, skew: bool, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = str(Path(tmp) / "run")
        cmd = [sys.executable, __file__, "--child", str(n), mode, run_dir]
        cmd += ["--skew"] if skew else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["ledger_replay_s"] = replay_seconds(run_dir) if mode == "dp" else None
    return r


def describe(n: int, mode: str, skew: bool, r: dict) -> str:
    replay = f", ledger replay {r['ledger_replay_s']:.1f} s" if mode == "dp" else ""
    return (
        f"{n:>6} clients {mode:>4}{' skew' if skew else ''}: "
        f"{r['wall_per_round_s']:.2f} s/round, "
        f"accounting {100 * r['accounting_share']:.1f} % "
        f"({r['accounting_s']:.2f} s), setup {r['setup_s']:.1f} s, peak RSS "
        f"{r['peak_rss_mb']:.0f} MB ({1024 * r['peak_rss_mb'] / n:.0f} KB/client), "
        f"{r['distinct_q']} distinct q, ε {r['max_epsilon']}{replay}"
    )


if __name__ == "__main__":
    main()
