"""``dpfedlora export RUN_DIR --out DIR`` and ``dpfedlora evaluate RUN_DIR [--data FILE]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a finished run's global model as a peft adapter folder (or merged model)",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    p.add_argument("--out", required=True, help="folder to write (created)")
    p.set_defaults(handler=cmd_export)

    e = sub.add_parser("evaluate", help="score a run's exported global model on held-out data")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    e.add_argument(
        "--data",
        help="a .csv/.tsv/.json/.jsonl/.parquet file to score instead of the run's held-out "
        "split (same columns as the run's data; every row is scored)",
    )
    e.add_argument("--adapter", help="an exported folder (default: export to a temporary one)")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(handler=cmd_evaluate)


def _run_dir(path: str) -> Path:
    run_dir = Path(path)
    if not (run_dir / "config.yaml").is_file():
        raise CLIError(f"argument RUN_DIR: {path!r} holds no config.yaml (not a run directory).")
    return run_dir


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_run

    info = export_run(_run_dir(args.run_dir), args.out)
    load = (
        "PeftModel.from_pretrained(base, DIR)"
        if info["kind"] == "peft_adapter"
        else "from_pretrained(DIR)"
    )
    print(f"exported {info['method']} ({info['kind']}) -> {args.out}; load with {load}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from ..scoring import score_export

    run_dir = _run_dir(args.run_dir)
    if args.data is not None and not Path(args.data).is_file():
        raise CLIError(f"argument --data: no such file: {args.data!r}.")
    if args.adapter is not None and not (Path(args.adapter) / "export.json").is_file():
        raise CLIError(f"argument --adapter: {args.adapter!r} holds no export.json.")
    with tempfile.TemporaryDirectory() as tmp:
        metrics = score_export(run_dir, args.adapter or tmp, data_file=args.data)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0
