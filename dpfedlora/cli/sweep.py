"""``dpfedlora sweep SWEEP.yaml``, ``dpfedlora report DIR`` and ``dpfedlora tune SWEEP.yaml``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError
from .account import steps as positive_int


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid of runs (resumable), then report")
    p.add_argument("sweep", metavar="SWEEP", help="sweep YAML (base: CONFIG, grid: {key: [..]})")
    p.add_argument("--out", help="sweep directory (default runs/sweep-<file name>)")
    p.add_argument(
        "--jobs", type=positive_int, help="cells in parallel (default from cores and memory)"
    )
    p.add_argument(
        "--stop-after",
        type=float,
        metavar="MINUTES",
        help="wind down after this many minutes: start no new cell, and let each running cell "
        "finish its round and pause (nothing spent is lost; rerun to continue). SIGUSR1 to the "
        "sweep does the same at any time",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_sweep)

    r = sub.add_parser("report", help="tables and plots of a sweep directory")
    r.add_argument("dir", metavar="DIR")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=cmd_report)

    add_tune_parser(sub)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..experiments.report import write_report
    from ..experiments.sweep import run_sweep

    if not Path(args.sweep).is_file():
        raise CLIError(f"argument SWEEP: no such file: {args.sweep!r}.")
    if args.stop_after is not None and not 0 < args.stop_after < float("inf"):
        raise CLIError(
            f"argument --stop-after: must be a positive number of minutes. Found {args.stop_after}."
        )
    out = args.out or f"runs/sweep-{Path(args.sweep).stem}"
    try:
        result = run_sweep(
            args.sweep,
            out,
            jobs=args.jobs,
            progress=not args.no_progress,
            stop_after=None if args.stop_after is None else 60.0 * args.stop_after,
        )
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    report = write_report(out)
    print(
        f"sweep: {result['cells']} cells, ran {result['ran']}, skipped {result['skipped']} "
        f"(complete), failed {len(result['failed'])}"
        + (
            f", {report['short']} short of their rounds (not in the means)"
            if report["short"]
            else ""
        )
        + f" -> {out}/report.md"
    )
    if result["unfinished"]:
        print(
            f"wound down: {result['unfinished']} cell(s) paused at a round boundary or not "
            "started; rerun the same command to continue them."
        )
    return 1 if result["failed"] or report["violations"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..experiments.report import write_report

    if not (Path(args.dir) / "sweep.json").is_file():
        raise CLIError(f"argument DIR: {args.dir!r} holds no sweep.json (run `dpfedlora sweep`).")
    result = write_report(args.dir)
    if args.json:
        print(json.dumps(result))
    else:
        print((Path(args.dir) / "report.md").read_text())
    if result["violations"]:
        print(f"{result['violations']} cell(s) spent more than their target ε: accounting error.")
        return 3
    return 0


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="choose a hyperparameter per case and ε on public proxy clients (no privacy cost)",
        description=(
            "Train every value of KEY on proxy clients built from the sweep base's public share "
            "(data.public_fraction), with the noise each private cell would have (same q, steps "
            "and rounds; σ scaled to the proxies' smaller batches), score it on the public "
            "validation part, and write a copy of the sweep with the chosen values in its cases. "
            "Private shards and the held-out test set are never read."
        ),
    )
    p.add_argument(
        "sweep",
        metavar="SWEEP",
        help="sweep YAML whose cells set data.public_fraction (in the base or the grid)",
    )
    p.add_argument("--key", default="train.lr", help="dotted config key to tune (default train.lr)")
    p.add_argument(
        "--values", nargs="+", required=True, metavar="V", help="values to try, e.g. 0.01 0.03 0.1"
    )
    p.add_argument(
        "--epsilon",
        nargs="+",
        type=float,
        metavar="EPS",
        help="tune the private cells at these target ε only (the others take the nearest, on a "
        "log scale); default every finite ε of the sweep",
    )
    p.add_argument("--out", help="tuning directory (default runs/tune-<file name>)")
    p.add_argument(
        "--write-sweep", metavar="PATH", help="tuned sweep file (default OUT/tuned.yaml)"
    )
    p.add_argument(
        "--jobs", type=positive_int, help="candidates in parallel (default from cores and memory)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    import yaml

    from ..config import ConfigError
    from ..experiments.sweep import read_sweep
    from ..experiments.tune import expand_cases, tune, tune_table

    if not Path(args.sweep).is_file():
        raise CLIError(f"argument SWEEP: no such file: {args.sweep!r}.")
    out = args.out or f"runs/tune-{Path(args.sweep).stem}"
    values = [yaml.safe_load(v) for v in args.values]
    for e in args.epsilon or ():
        if not (0 < e < float("inf")):
            raise CLIError(f"argument --epsilon: each ε must be positive and finite. Found {e}.")
    try:
        report = tune(
            args.sweep, out, key=args.key, values=values, epsilons=args.epsilon, jobs=args.jobs,
            progress=not args.no_progress, write_sweep=args.write_sweep,
        )  # fmt: skip
        _, grid, cases = read_sweep(args.sweep)
        cases = expand_cases(grid, cases, args.key)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    print("validation balanced accuracy (public proxies):")
    print(tune_table(report, cases))
    print(f"tuned sweep: {report['tuned_sweep']}")
    return 1 if report["failed"] else 0
