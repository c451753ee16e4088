"""``dpfedlora run CONFIG``: a private federated fine-tuning run."""

from __future__ import annotations

import argparse
import json

from . import CLIError, add_overrides


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a (private) federated fine-tuning from a YAML config",
        description=(
            "Run a federation into a run directory. To stop it with nothing lost, send SIGUSR1 "
            "(kill -USR1 PID) or create the file OUT/PAUSE: it finishes the round in progress, "
            "checkpoints and stops; --resume continues. Ctrl-C or SIGTERM stops sooner, between "
            "clients, and the abandoned round's spend stays counted."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="YAML config (see configs/)")
    add_overrides(p, "method.name=fedsb --set server.rounds=4")
    p.add_argument("--out", help="run directory (default runs/<name>-<method>-<config hash>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument(
        "--until-round",
        type=int,
        help="stop cleanly after this round (continue later with --resume)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..config import load_config
    from ..federation.rundir import config_hash, json_safe
    from ..progress import risk_note

    if not Path(args.config).is_file():
        raise CLIError(f"argument CONFIG: no such file: {args.config!r}.")
    if args.until_round is not None and args.until_round < 1:
        raise CLIError(
            f"argument --until-round: must be an integer >= 1. Found {args.until_round}."
        )
    cfg = load_config(args.config, args.overrides)  # the whole config, before anything is built
    out = args.out or f"runs/{cfg.name}-{cfg.method.name}-{config_hash(cfg)[:8]}"
    from ..federation import run

    # With --json, stdout carries only the JSON document; every human line goes to stderr.
    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    summary = run(
        cfg,
        out,
        resume=args.resume,
        progress=not args.no_progress,
        until_round=args.until_round,
        log=log,
    )
    code = 130 if summary["stopped_reason"] == "interrupted" else 0
    if args.json:
        print(json.dumps(json_safe(summary)))
    else:
        final = summary["final"]
        eps = summary["max_epsilon"]
        privacy = (
            f"max ε = {eps:.3f} at δ = {summary['delta']:g}"
            + risk_note(summary.get("risk", {}).get("tpr_at_fpr"))
            if summary["private"]
            else "non-private"
        )
        print(
            f"done: {summary['rounds_completed']} rounds ({summary['stopped_reason']}), {privacy}, "
            + ", ".join(f"{k} {v:.3f}" for k, v in final.items() if isinstance(v, float))
            + f" -> {out}"
        )
    return code
