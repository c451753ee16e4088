"""Attack risk on the accounting verbs: ``--fpr`` and ``calibrate --target-tpr --at-fpr``.

Next to ε, ``epsilon``, ``calibrate`` and ``ledger`` print upper bounds on what any
membership-inference attack can do (:mod:`accounting.risk`): the true-positive rate it can reach
at each false-positive rate, and its advantage (max TPR − FPR). Torch-free, like the verbs.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from accounting import (
    DEFAULT_FPRS,
    Risk,
    attack_risk,
    dpsgd_event,
    make_accountant,
    noise_multiplier_for_risk,
)
from accounting.calibrate import CalibrationError

from . import CLIError

__all__ = ["open_rate", "add_fprs", "risk_line", "risk_header", "risk_cells",
           "calibrate_to_risk"]  # fmt: skip


def open_rate(text: str) -> float:
    """A false- or true-positive rate, in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a rate in (0, 1). Found {text!r}.") from None
    if not 0 < value < 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be a rate in (0, 1), e.g. 0.01. Found {text}.")
    return value


def add_fprs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fpr",
        dest="fprs",
        type=open_rate,
        nargs="+",
        default=list(DEFAULT_FPRS),
        metavar="A",
        help="false-positive rates at which to bound any membership-inference attack's TPR "
        "(default: 0.001 0.01 0.1)",
    )


def risk_line(risk: Risk) -> str:
    """One line: the TPR bound at each FPR, and the advantage."""
    tprs = ", ".join(f"TPR ≤ {t:.4f} at FPR {a:g}" for a, t in risk.tpr_at_fpr.items())
    return (
        f"attack risk (any membership inference, upper bound): {tprs}; advantage ≤ "
        f"{risk.advantage:.4f}"
    )


def risk_header(fprs: list[float]) -> str:
    cells = "".join(f"  {'TPR@' + format(a, 'g'):>10}" for a in dict.fromkeys(fprs))
    return cells + f"  {'advantage':>9}"


def risk_cells(risk: Risk) -> str:
    return "".join(f"  {t:>10.4f}" for t in risk.tpr_at_fpr.values()) + (
        f"  {risk.advantage:>9.4f}"
    )


def calibrate_to_risk(args: argparse.Namespace, how: str) -> tuple[dict[str, Any], str]:
    """σ for --target-tpr at --at-fpr; the JSON payload and the text, ε at --delta included."""
    if args.target_tpr is None or args.at_fpr is None:
        given, missing = (
            ("--target-tpr", "--at-fpr") if args.at_fpr is None else ("--at-fpr", "--target-tpr")
        )
        raise CLIError(f"argument {missing} is required with {given}.")
    if not args.at_fpr < args.target_tpr:
        raise CLIError(
            f"argument --target-tpr: must be above --at-fpr ({args.at_fpr:g}): guessing at random "
            f"already has TPR = FPR. Found {args.target_tpr:g}."
        )
    q, steps = args.sample_rate, args.steps
    try:
        sigma = noise_multiplier_for_risk(
            target_tpr=args.target_tpr, at_fpr=args.at_fpr, sampling_rate=q, steps=steps,
            backend=args.accountant,
        )  # fmt: skip
    except CalibrationError as exc:
        raise CLIError(str(exc)) from None
    acc = make_accountant(args.accountant).compose(
        dpsgd_event(noise_multiplier=sigma, sampling_rate=q, steps=steps)
    )
    eps = acc.epsilon(args.delta)
    fprs = sorted({args.at_fpr, *args.fprs})
    risk = attack_risk(acc, fprs=fprs)
    payload = {
        "noise_multiplier": sigma,
        "target_tpr": args.target_tpr,
        "at_fpr": args.at_fpr,
        "tpr": risk.tpr_at_fpr[args.at_fpr],
        "epsilon": eps,
        "delta": args.delta,
        "accountant": acc.answered_by,
        "risk": risk.to_json(),
        **({"sampling_rate": q, "steps": steps} if how else {}),
    }
    eps_text = "∞" if math.isinf(eps) else f"{eps:.4f}"
    text = (
        (f"{how}\n" if how else "")
        + f"σ = {sigma:.4f} keeps any membership-inference attack's TPR at FPR {args.at_fpr:g} "
        f"at {risk.tpr_at_fpr[args.at_fpr]:.4f} <= {args.target_tpr:g} ({args.accountant}; "
        f"q = {q:g}, {steps} steps)\n"
        f"the same σ gives ε = {eps_text} at δ = {args.delta:g}\n" + risk_line(risk)
    )
    return payload, text
