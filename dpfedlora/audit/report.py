"""Tables and plots for audit results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["noise_table", "plot_noise"]

SWEPT = (("local_steps", "local steps"), ("rank", "rank"), ("noise_multiplier", "σ"))


def noise_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| method | local steps | rank | σ | signal ‖ΔW(0)‖ | linear noise | non-linear noise | "
        "non-linear / linear | SNR | client 0 linear (predicted) | "
        "client 0 non-linear (predicted) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        c = r["client0"]
        lines.append(
            f"| {r['method']} | {r['local_steps']} | {r['rank']} | {r['noise_multiplier']:g} | "
            f"{r['signal_norm']:.3e} | {r['linear_noise_norm']:.3e} | "
            f"{r['nonlinear_noise_norm']:.3e} | {r['nonlinear_to_linear']:.2e} | {r['snr']:.2e} | "
            f"{c['linear_noise_norm']:.3e} ({r['predicted_client0_linear']:.3e}) | "
            f"{c['nonlinear_noise_norm']:.3e} ({r['predicted_client0_nonlinear']:.3e}) |"
        )
    return head + "\n".join(lines) + "\n"


def plot_noise(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """For every swept variable (more than one value): noise norms against it, one line per
    method; solid = linear part, dashed = non-linear part (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for key, label in SWEPT:
        values = sorted({r[key] for r in rows})
        if len(values) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, m in enumerate(methods):
            pts = sorted((r[key], r) for r in rows if r["method"] == m)
            xs = [x for x, _ in pts]
            color = f"C{i}"
            ax.plot(
                xs,
                [r["linear_noise_norm"] for _, r in pts],
                "-o",
                color=color,
                label=f"{m} linear",
                ms=4,
            )
            ax.plot(
                xs,
                [max(r["nonlinear_noise_norm"], 1e-12) for _, r in pts],
                "--s",
                color=color,
                label=f"{m} non-linear",
                ms=4,
            )
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("‖noise in aggregated ΔW‖_F")
        ax.set_title(f"noise reaching the model vs {label}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / f"noise_vs_{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
