"""Accounting verbs: ``epsilon``, ``calibrate``, ``ledger``.

These never import torch (they start in about a second) and load only the accountant backend
they use.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accounting import (
    Ledger,
    LedgerError,
    available_backends,
    calibrate_dpsgd,
    dpsgd_event,
    make_accountant,
)
from accounting.calibrate import CalibrationError

from . import CLIError


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
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), typically below 1/n. Found {text}.")
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
            "--delta", type=delta, required=True, help="target δ (probability, in (0, 1))"
        )
    p.add_argument(
        "--accountant",
        choices=available_backends(),
        default=None if not with_delta else "prv",
        help="accountant backend (default: prv, its upper bound; pld and rdp via dp-accounting;"
        " for a run directory, the run's own)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_dpsgd(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sample-rate",
        type=rate,
        required=True,
        help="Poisson sampling rate q = expected batch size / dataset size, in (0, 1]",
    )
    p.add_argument("--steps", type=steps, required=True, help="number of DP-SGD steps (integer)")


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
    p.set_defaults(handler=cmd_epsilon)

    p = sub.add_parser("calibrate", help="noise multiplier σ that meets a target ε")
    p.add_argument("--target-epsilon", type=positive, required=True, help="ε budget (> 0)")
    _add_dpsgd(p)
    _add_common(p)
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
    event = dpsgd_event(
        noise_multiplier=args.noise_multiplier, sampling_rate=args.sample_rate, steps=args.steps
    )
    acc = make_accountant(args.accountant).compose(event)
    eps = _with_warnings("epsilon", lambda: acc.epsilon(args.delta))
    _emit(
        args,
        {"epsilon": eps, "delta": args.delta, "accountant": acc.answered_by},
        f"ε = {eps:.4f} at δ = {args.delta:g} ({acc.answered_by} upper bound; "
        f"σ = {args.noise_multiplier:g}, q = {args.sample_rate:g}, {args.steps} steps)",
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
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
    _emit(
        args,
        {
            "noise_multiplier": cal.noise_multiplier,
            "epsilon": cal.epsilon,
            "target_epsilon": cal.target_epsilon,
            "delta": cal.delta,
            "accountant": cal.accountant,
        },
        f"σ = {cal.noise_multiplier:.4f} gives ε = {cal.epsilon:.4f} <= {cal.target_epsilon:g} "
        f"at δ = {cal.delta:g} ({cal.accountant}; q = {args.sample_rate:g}, {args.steps} steps)",
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
    args.accountant = args.accountant or settings.get("accountant", "prv")

    def replay() -> tuple[Ledger, dict[str, float]]:
        ledger = Ledger(path, accountant=args.accountant)
        return ledger, ledger.epsilons(delta=args.delta)

    try:
        ledger, eps = _with_warnings("ledger", replay)
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
                }
            )
        )
        return 0
    print(f"{len(ledger)} releases, {len(eps)} clients, δ = {args.delta:g} ({used} upper bound)")
    print(f"{'client':>10}  {'releases':>8}  {'epsilon':>8}")
    for client, e in eps.items():
        n = sum(1 for r in ledger if r.client == client)
        print(f"{client:>10}  {n:>8}  {e:>8.4f}")
    print(f"max ε = {max_eps:.4f}")
    return 0
