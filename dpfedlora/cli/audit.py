"""``dpfedlora audit noise|privacy CONFIG``: measured noise amplification; empirical privacy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError, add_overrides


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers. Found {text!r}."
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be integers >= 1. Found {text!r}.")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated numbers. Found {text!r}."
        ) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"must be numbers > 0. Found {text!r}.")
    return values


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from . import OneLineParser

    p = sub.add_parser("audit", help="measure noise amplification, or audit privacy empirically")
    kinds = p.add_subparsers(dest="audit_kind", metavar="KIND", parser_class=OneLineParser)
    kinds.required = True

    n = kinds.add_parser("noise", help="linear and non-linear DP noise in ΔW, per method")
    n.add_argument("config", metavar="CONFIG")
    add_overrides(n)
    n.add_argument("--methods", default="fedit,ffa,fedsb,rolora", help="comma-separated methods")
    n.add_argument(
        "--local-steps",
        type=_ints,
        default=None,
        help="local SGD steps per client (list sweeps), default train.local_steps",
    )
    n.add_argument("--ranks", type=_ints, default=None, help="adapter ranks (list sweeps)")
    n.add_argument(
        "--noise-multipliers",
        type=_floats,
        default=None,
        help="σ values, unitless (list sweeps); default privacy.noise_multiplier or 1",
    )
    n.add_argument(
        "--out",
        help="directory for noise_audit.md/.json, plots and the audit's ledger "
        "(default runs/audit-noise-<name>)",
    )
    n.add_argument(
        "--unsafe-uses-private-data",
        action="store_true",
        help="allow a dataset other than builtin:synthetic: trains on each shard 3x without "
        "accounting (recorded as NonPrivate in the audit's ledger)",
    )
    n.add_argument("--json", action="store_true", help="print one JSON object keyed by method")
    n.add_argument("--no-progress", action="store_true")
    n.set_defaults(handler=cmd_noise, verb="audit noise")

    q = kinds.add_parser("privacy", help="one-run audit: ε lower bound vs the ledger's ε")
    q.add_argument("config", metavar="CONFIG")
    add_overrides(q)
    q.add_argument("--canaries", type=int, default=1000, help="number of canaries m")
    q.add_argument(
        "--guesses",
        type=int,
        default=0,
        help="guesses r (the r highest scores; with --guess-side both, half top and half "
        "bottom); default m / 10",
    )
    q.add_argument("--canary-kind", choices=["gradient", "input"], default="gradient")
    q.add_argument(
        "--guess-side",
        choices=["in", "both"],
        default="in",
        help="in (default): 'in' for the r highest scores; both: 'in' for the r/2 highest and "
        "'out' for the r/2 lowest (Steinke et al.). Fixed before the run",
    )
    q.add_argument("--confidence", type=float, default=0.95, help="confidence of the lower bound")
    q.add_argument(
        "--steps",
        type=int,
        default=0,
        help="DP-SGD steps of the audited run (default local_steps x rounds)",
    )
    q.add_argument(
        "--unsafe-no-noise",
        action="store_true",
        help="train WITHOUT DP noise (audit-only sanity check; ε upper = inf)",
    )
    q.add_argument("--out", help="run directory of the audited run (ledger, audit.json)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=cmd_privacy, verb="audit privacy")


def _load(args):
    from ..config import ConfigError, load_config

    if not Path(args.config).is_file():
        raise CLIError(f"argument CONFIG: no such file: {args.config!r}.")
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def cmd_noise(args: argparse.Namespace) -> int:
    from ..audit.noise import audit_noise, check_noise_audit
    from ..audit.report import noise_table, plot_noise
    from ..methods import METHODS

    cfg = _load(args)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CLIError(
            f"argument --methods: unknown {unknown}. Allowed: {', '.join(sorted(METHODS))}."
        )
    check_noise_audit(cfg, allow_private_data=args.unsafe_uses_private_data)
    out = Path(args.out or f"runs/audit-noise-{cfg.name}")
    out.mkdir(parents=True, exist_ok=True)
    rows = audit_noise(
        cfg,
        methods=methods,
        local_steps=args.local_steps or [cfg.train.local_steps],
        ranks=args.ranks or [cfg.method.rank],
        noise_multipliers=args.noise_multipliers or [cfg.privacy.noise_multiplier or 1.0],
        progress=not args.no_progress,
        ledger_path=out / "ledger.jsonl",
        allow_private_data=args.unsafe_uses_private_data,
    )
    table = noise_table(rows)
    (out / "noise_audit.md").write_text(table)
    (out / "noise_audit.json").write_text(json.dumps(rows, indent=1))
    plot_noise(rows, out / "plots")
    if args.json:
        by_method: dict = {}
        for r in rows:
            entry = by_method.setdefault(r["method"], {k: v for k, v in r.items() if k != "layers"})
            entry.setdefault("settings", []).append({k: v for k, v in r.items() if k != "layers"})
        print(json.dumps(by_method))
    else:
        print(table)
    return 0


def cmd_privacy(args: argparse.Namespace) -> int:
    from ..audit.privacy import audit_privacy, refuse_unaudited_modes

    cfg = _load(args)
    refuse_unaudited_modes(cfg)
    if not 0 < args.confidence < 1:
        raise CLIError(f"argument --confidence: must be in (0, 1). Found {args.confidence}.")
    if args.canaries < 2:
        raise CLIError(f"argument --canaries: must be >= 2. Found {args.canaries}.")
    out = args.out or f"runs/audit-{cfg.name}-{args.canary_kind}"
    result = audit_privacy(
        cfg,
        out,
        canaries=args.canaries,
        guesses=args.guesses or max(2, args.canaries // 10),
        kind=args.canary_kind,
        confidence=args.confidence,
        steps=args.steps or None,
        unsafe_no_noise=args.unsafe_no_noise,
        guess_side=args.guess_side,
    )
    line = (
        f"| {args.canary_kind} canaries | m = {result['canaries']} | {result['correct_guesses']}/"
        f"{result['guesses']} correct | ε lower bound ({result['confidence']:.0%}): "
        f"{result['epsilon_lower']:.3f} (Steinke-Nasr-Jagielski), "
        f"{result['epsilon_lower_fdp']:.3f} (f-DP test, (ε, δ) curve), "
        f"{result['epsilon_lower_gdp']:.3f} (f-DP test, Gaussian curve μ = "
        f"{result['mu_lower']:.3f}) | ε upper bound {result['epsilon_upper']:.3f} (accountant, "
        f"δ = {result['delta']:g}) |"
    )
    print(json.dumps(result) if args.json else line)
    # both (ε, δ) rejections must stay below the accountant's (ε, δ) bound; the Gaussian-curve
    # ε assumes a curve shape the accountant does not, so it is reported, not compared
    if max(result["epsilon_lower"], result["epsilon_lower_fdp"]) > result["epsilon_upper"]:
        import sys

        print(
            "AUDIT FAILURE: the empirical lower bound exceeds the accountant's upper bound. "
            "The DP implementation or its accounting is wrong; do not trust this run's ε.",
            file=sys.stderr,
        )
        return 3
    return 0
