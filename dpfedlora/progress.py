"""What a run prints: the progress bar over rounds and one line per round."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["progress_bar", "write_line", "fmt_bytes", "round_line", "risk_note", "DISPLAY_FPR"]

# the FPR whose attack TPR is shown beside ε (lines, report): 1 %, the middle of DEFAULT_FPRS
DISPLAY_FPR = "0.01"


def progress_bar(rounds: range, enabled: bool):
    if not enabled:
        return rounds
    from tqdm.auto import tqdm

    return tqdm(rounds, desc="rounds", unit="round", leave=False)


def write_line(bar, enabled: bool, log: Callable[[str], None], line: str) -> None:
    if enabled and hasattr(bar, "external_write_mode"):
        with bar.external_write_mode():  # the line goes where `log` sends it (stdout or stderr)
            log(line)
    else:
        log(line)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def risk_note(tpr_at_fpr: dict[str, float] | None) -> str:
    """`` (TPR@1%FPR ≤ 0.081)``: the most a membership-inference attack can find at 1 % false
    positives (federation.risk); empty where a row or summary predates risk."""
    tpr = (tpr_at_fpr or {}).get(DISPLAY_FPR)
    return "" if tpr is None else f" (TPR@1%FPR ≤ {tpr:.3f})"


def round_line(row: dict[str, Any], total: int) -> str:
    parts = [
        f"round {row['round']}/{total}",
        f"clients {row['clients']}",
        f"loss {row['train_loss']:.4f}",
    ]
    for key, label in (
        ("eval_accuracy", "acc"),
        ("eval_balanced_accuracy", "bal_acc"),
        ("eval_perplexity", "ppl"),
    ):
        if key in row:
            parts.append(f"{label} {row[key]:.3f}")
    eps = row["max_epsilon"]
    if eps is None or math.isinf(eps):  # None: a row read back from JSON
        parts.append("ε n/a (non-private)")
    else:
        parts.append(f"max ε {eps:.3f}" + risk_note(row.get("max_tpr_at_fpr")))
    parts.append(f"up {fmt_bytes(row['bytes_up'])} down {fmt_bytes(row['bytes_down'])}")
    return " | ".join(parts)
