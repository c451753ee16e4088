"""Plots written into a run directory's ``plots/`` (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_run", "plot_label_histogram"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(history: list[dict[str, Any]], out: Path, *, title: str) -> list[Path]:
    """Eval metrics per round (left) and max ε spent per round (right)."""
    if not history:
        return []
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    rounds = [r["round"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (
        ("eval_balanced_accuracy", "balanced accuracy"),
        ("eval_accuracy", "accuracy"),
        ("eval_macro_f1", "macro-F1"),
        ("eval_majority_baseline", "majority baseline"),
    ):
        if key in history[0]:
            style = "--" if "majority" in key else "-o"
            ax1.plot(rounds, [r[key] for r in history], style, label=label, ms=4)
    if "eval_accuracy" not in history[0]:
        ax1.plot(rounds, [r.get("eval_loss") for r in history], "-o", label="eval loss", ms=4)
    ax1.set_xlabel("round")
    ax1.set_ylabel("fraction" if "eval_accuracy" in history[0] else "nats per example")
    ax1.set_title("held-out metrics")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    eps = [r.get("max_epsilon") for r in history]
    if all(e is not None and not math.isinf(e) for e in eps):
        ax2.plot(rounds, eps, "-o", color="tab:red", ms=4, label="max ε")
        ax2.set_title("max ε spent over clients (ledger), attack risk")
        ax2.set_ylabel("ε (at the run's δ)")
        _plot_risk(ax2, history)
    else:
        ax2.text(0.5, 0.5, "non-private run: no ε", ha="center", va="center")
        ax2.set_title("privacy")
    ax2.set_xlabel("round")
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):  # rounds are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = out / "metrics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _plot_risk(ax, history: list[dict[str, Any]]) -> None:
    """The worst client's membership-inference TPR bound at 1 % FPR per round, on a second
    axis beside ε (rows written before risk was recorded have none: nothing drawn)."""
    from ..progress import DISPLAY_FPR

    pts = [
        (r["round"], r["max_tpr_at_fpr"][DISPLAY_FPR])
        for r in history
        if DISPLAY_FPR in (r.get("max_tpr_at_fpr") or {})
    ]
    if not pts:
        ax.legend(fontsize=8)
        return
    tw = ax.twinx()
    tw.plot(*zip(*pts), "--s", color="tab:purple", ms=4, label="TPR at 1 % FPR (worst client)")
    tw.set_ylabel("attack TPR at 1 % FPR (bound)")
    tw.set_ylim(0.0, 1.0)
    lines = ax.get_lines() + tw.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper left")


def plot_label_histogram(hist: np.ndarray, out: Path, *, label_names: list[str]) -> Path:
    """Stacked bars: examples of each class on each client."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(hist) + 2), 3.5))
    bottom = np.zeros(len(hist))
    for c in range(hist.shape[1]):
        ax.bar(range(len(hist)), hist[:, c], bottom=bottom, label=label_names[c])
        bottom += hist[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("training examples")
    ax.set_xticks(range(len(hist)))
    ax.legend(fontsize=8)
    ax.set_title("per-client label histogram")
    fig.tight_layout()
    path = out / "label_histogram.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
