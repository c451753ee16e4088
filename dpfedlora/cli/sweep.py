"""``dpfedlora sweep SWEEP.yaml`` and ``dpfedlora report DIR``."""

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
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_sweep)

    r = sub.add_parser("report", help="tables and plots of a sweep directory")
    r.add_argument("dir", metavar="DIR")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=cmd_report)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..experiments.report import write_report
    from ..experiments.sweep import run_sweep

    if not Path(args.sweep).is_file():
        raise CLIError(f"argument SWEEP: no such file: {args.sweep!r}.")
    out = args.out or f"runs/sweep-{Path(args.sweep).stem}"
    try:
        result = run_sweep(args.sweep, out, jobs=args.jobs, progress=not args.no_progress)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    report = write_report(out)
    print(
        f"sweep: {result['cells']} cells, ran {result['ran']}, skipped {result['skipped']} "
        f"(complete), failed {len(result['failed'])} -> {out}/report.md"
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
