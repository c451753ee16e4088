"""Accounting verbs: ``epsilon``, ``calibrate``, ``ledger``.

Each reports ε at δ and, next to it, upper bounds on membership-inference risk (TPR at each
``--fpr``, advantage; :mod:`dpfedlora.cli.risk`). These never import torch (they start in about
a second) and load only the accountant backend they use.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accounting import (
    DEFAULT_BACKEND,
    MAX_DELTA,
    Ledger,
    LedgerError,
    attack_risk,
    available_backends,
    calibrate_dpsgd,
    dpsgd_event,
    make_accountant,
)
from accounting.accountant import large_delta_problem
from accounting.calibrate import CalibrationError

from . import CLIError
from .risk import add_fprs, calibrate_to_risk, open_rate, risk_cells, risk_header, risk_line


# ------------------------------------------------------------------ argument types
def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number. Found {text!r}.") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be a number. Found {text!r}.")
    return value


def positive(text: str) -> float:
    value = _number(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number. Found {text}.")
    return value


def rate(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]. Found {text}.")
    return value


def delta(text: str) -> float:
    value = _number(text)
    if value >= MAX_DELTA:
        raise argparse.ArgumentTypeError(large_delta_problem(value))
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"must be in (0, {MAX_DELTA:g}), typically below 1/n. Found {text}."
        )
    return value


def steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1. Found {text!r}.") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1. Found {text}.")
    return value


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(
            f"no such file or directory: {text!r}. Give a run directory or its ledger.jsonl."
        )
    return path


def _run_settings(run_dir: Path) -> dict[str, Any]:
    """δ, accountant and privacy mode of a run directory, from its resolved config.yaml."""
    import yaml

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return {}
    try:
        privacy = (yaml.safe_load(cfg_path.read_text()) or {}).get("privacy", {}) or {}
    except (yaml.YAMLError, AttributeError):
        raise CLIError(f"{cfg_path} is not a valid run config (YAML mapping).") from None
    return privacy if isinstance(privacy, dict) else {}


def _add_common(p: argparse.ArgumentParser, *, with_delta: bool = True) -> None:
    if with_delta:
        p.add_argument(
            "--delta", type=delta, required=True, help="target δ (below 0.1, and below 1/n)"
        )
    p.add_argument(
        "--accountant",
        choices=available_backends(),
        default=None if not with_delta else DEFAULT_BACKEND,
        help=f"accountant backend (default: {DEFAULT_BACKEND}, our numpy PLD; prv its upper"
        " bound; pld and rdp via dp-accounting; for a run directory, the run's own)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_dpsgd(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sample-rate",
        type=rate,
        help="Poisson sampling rate q = expected batch size / dataset size, in (0, 1]",
    )
    p.add_argument("--steps", type=steps, help="number of DP-SGD steps (integer)")
    g = p.add_argument_group(
        "or plan in data units (as Opacus's make_private_with_epsilon): q = B / N, "
        "steps = ceil(E / q) per round, times R rounds"
    )
    g.add_argument("--dataset-size", type=steps, metavar="N", help="records in one shard")
    g.add_argument("--batch-size", type=positive, metavar="B", help="expected batch (records)")
    g.add_argument("--epochs", type=positive, metavar="E", help="local epochs per round")
    g.add_argument("--rounds", type=steps, metavar="R", help="rounds (default 1)")


DATA_UNITS = ("dataset_size", "batch_size", "epochs", "rounds")


def resolve_dpsgd(args: argparse.Namespace) -> tuple[float, int, str]:
    """(q, steps, how they were given) from --sample-rate/--steps or the data-unit flags."""
    direct = args.sample_rate is not None or args.steps is not None
    units = [k for k in DATA_UNITS if getattr(args, k) is not None]
    if direct and units:
        raise CLIError(
            f"give --sample-rate and --steps, or --dataset-size/--batch-size/--epochs; found "
            f"both (--{units[0].replace('_', '-')})."
        )
    if direct:
        for flag, value, other in (
            ("--sample-rate", args.sample_rate, "--steps"),
            ("--steps", args.steps, "--sample-rate"),
        ):
            if value is None:
                raise CLIError(f"argument {flag} is required with {other}.")
        return args.sample_rate, args.steps, ""
    needed = [f"--{k.replace('_', '-')}" for k in DATA_UNITS[:3] if getattr(args, k) is None]
    if needed:
        raise CLIError(
            "give --sample-rate and --steps, or --dataset-size, --batch-size and --epochs "
            f"(missing {', '.join(needed)})."
        )
    if args.batch_size > args.dataset_size:
        raise CLIError(
            f"argument --batch-size: must be at most --dataset-size ({args.dataset_size}). "
            f"Found {args.batch_size:g}."
        )
    q = args.batch_size / args.dataset_size
    rounds = args.rounds or 1
    per_round = math.ceil(args.epochs / q)
    how = (
        f"q = {args.batch_size:g} / {args.dataset_size} = {q:.6g}; {per_round} steps per round "
        f"x {rounds} rounds = {per_round * rounds} steps"
    )
    return q, per_round * rounds, how


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("epsilon", help="ε spent by DP-SGD with given noise, sampling and steps")
    p.add_argument(
        "--noise-multiplier",
        type=positive,
        required=True,
        help="σ: noise std divided by the clip norm (unitless, > 0)",
    )
    _add_dpsgd(p)
    _add_common(p)
    add_fprs(p)
    p.set_defaults(handler=cmd_epsilon)

    p = sub.add_parser(
        "calibrate", help="noise multiplier σ that meets a target ε or a target attack risk"
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-epsilon", type=positive, help="ε budget (> 0)")
    target.add_argument(
        "--target-tpr",
        type=open_rate,
        help="largest TPR any membership-inference attack may reach at --at-fpr, in (0, 1)",
    )
    p.add_argument("--at-fpr", type=open_rate, help="the FPR at which --target-tpr holds")
    _add_dpsgd(p)
    _add_common(p)
    add_fprs(p)
    p.set_defaults(handler=cmd_calibrate)

    p = sub.add_parser("ledger", help="ε per client replayed from a privacy ledger")
    p.add_argument(
        "path", metavar="PATH", type=existing_path, help="a run directory or a ledger.jsonl file"
    )
    p.add_argument(
        "--delta",
        type=delta,
        default=None,
        help="δ at which to report ε (default: the run's privacy.delta, else 1e-5)",
    )
    _add_common(p, with_delta=False)
    add_fprs(p)
    p.set_defaults(handler=cmd_ledger)


# ------------------------------------------------------------------ handlers
def _with_warnings(verb: str, fn: Callable[[], Any]) -> Any:
    """Run fn, printing any warning as one line on stderr (no file/line noise)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    for w in caught:
        print(f"dpfedlora {verb}: warning: {w.message}", file=sys.stderr)
    return result


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload) if args.json else text)


def cmd_epsilon(args: argparse.Namespace) -> int:
    q, n_steps, how = resolve_dpsgd(args)
    event = dpsgd_event(noise_multiplier=args.noise_multiplier, sampling_rate=q, steps=n_steps)
    acc = make_accountant(args.accountant).compose(event)
    eps = _with_warnings("epsilon", lambda: acc.epsilon(args.delta))
    risk = attack_risk(acc, fprs=args.fprs)
    _emit(
        args,
        {
            "epsilon": eps,
            "delta": args.delta,
            "accountant": acc.answered_by,
            "risk": risk.to_json(),
            # the q and steps implied by data units (given directly, they are the inputs)
            **({"sampling_rate": q, "steps": n_steps} if how else {}),
        },
        (f"{how}\n" if how else "")
        + f"ε = {eps:.4f} at δ = {args.delta:g} ({acc.answered_by} upper bound; "
        f"σ = {args.noise_multiplier:g}, q = {q:g}, {n_steps} steps)\n" + risk_line(risk),
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    args.sample_rate, args.steps, how = resolve_dpsgd(args)
    if args.target_tpr is not None or args.at_fpr is not None:
        payload, text = _with_warnings("calibrate", lambda: calibrate_to_risk(args, how))
        _emit(args, payload, text)
        return 0
    try:
        cal = _with_warnings(
            "calibrate",
            lambda: calibrate_dpsgd(
                target_epsilon=args.target_epsilon,
                delta=args.delta,
                sampling_rate=args.sample_rate,
                steps=args.steps,
                accountant=args.accountant,
            ),
        )
    except CalibrationError as exc:
        raise CLIError(str(exc)) from None
    event = dpsgd_event(
        noise_multiplier=cal.noise_multiplier, sampling_rate=args.sample_rate, steps=args.steps
    )
    risk = attack_risk(make_accountant(args.accountant).compose(event), fprs=args.fprs)
    _emit(
        args,
        {
            "noise_multiplier": cal.noise_multiplier,
            "epsilon": cal.epsilon,
            "target_epsilon": cal.target_epsilon,
            "delta": cal.delta,
            "accountant": cal.accountant,
            "risk": risk.to_json(),
            **({"sampling_rate": args.sample_rate, "steps": args.steps} if how else {}),
        },
        (f"{how}\n" if how else "")
        + f"σ = {cal.noise_multiplier:.4f} gives ε = {cal.epsilon:.4f} <= {cal.target_epsilon:g} "
        f"at δ = {cal.delta:g} ({cal.accountant}; q = {args.sample_rate:g}, {args.steps} steps)\n"
        + risk_line(risk),
    )
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    path: Path = args.path
    settings = _run_settings(path if path.is_dir() else path.parent)
    if path.is_dir():
        if settings.get("mode") == "none":
            print(f"{path}: a non-private run has no ledger: nothing private was released.")
            return 0
        path = path / "ledger.jsonl"
        if not path.is_file():
            raise CLIError(
                f"{args.path}: no ledger.jsonl. Give a run directory of a private run (its "
                "ledger is written before the first release)."
            )
    args.delta = args.delta if args.delta is not None else float(settings.get("delta", 1e-5))
    # a run directory from before fastpld names its accountant in its config
    args.accountant = args.accountant or settings.get("accountant", DEFAULT_BACKEND)

    def replay() -> tuple[Ledger, dict[str, float], dict[str, Any]]:
        ledger = Ledger(path, accountant=args.accountant)
        eps = ledger.epsilons(delta=args.delta)
        return ledger, eps, {c: ledger.risk(c, fprs=args.fprs) for c in eps}

    try:
        ledger, eps, risks = _with_warnings("ledger", replay)
    except (LedgerError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: not a valid ledger: {exc}") from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    max_eps = max(eps.values(), default=0.0)
    used = "+".join(sorted(ledger.answered_by)) or args.accountant
    if args.json:
        print(
            json.dumps(
                {
                    "epsilon": max_eps,
                    "max_epsilon": max_eps,
                    "clients": eps,
                    "delta": args.delta,
                    "accountant": used,
                    "records": len(ledger),
                    # per client: bounds on any membership-inference attack on its records
                    "risk": {c: r.to_json() for c, r in risks.items()},
                    "max_risk": ledger.max_risk(fprs=args.fprs).to_json(),
                }
            )
        )
        return 0
    print(f"{len(ledger)} releases, {len(eps)} clients, δ = {args.delta:g} ({used} upper bound)")
    print(f"{'client':>10}  {'releases':>8}  {'epsilon':>8}" + risk_header(args.fprs))
    counts = Counter(r.client for r in ledger)
    for client, e in eps.items():
        print(f"{client:>10}  {counts[client]:>8}  {e:>8.4f}" + risk_cells(risks[client]))
    print(f"max ε = {max_eps:.4f}")
    print("max " + risk_line(ledger.max_risk(fprs=args.fprs)))
    return 0
