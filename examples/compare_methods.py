"""Compare federated methods at equal ε on the same non-IID split, with a plot.

Each method gets the same model, data, clients, sampling, rounds and ε budget (σ is calibrated
per run, so all spend the same ε). Prints a table and writes per-round curves to
``<out>/compare.png``.

    .venv/bin/python examples/compare_methods.py --methods fedit,ffa,fedsb --epsilon 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpfedlora import load_config, run

ROOT = Path(__file__).resolve().parents[1]

# Method-specific settings that keep each one sensible on the quickstart task; the shared keys
# (rank, layers, ε, sampling, rounds) stay identical.
METHOD_SETTINGS = {"fedsb": ["method.alpha=4.0"], "ffa": [], "fedit": [], "rolora": []}


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--methods", default="fedit,ffa,fedsb")
    p.add_argument("--epsilon", type=float, default=3.0)
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    args = p.parse_args(argv)

    curves: dict[str, list[dict]] = {}
    for method in args.methods.split(","):
        over = [f"method.name={method}", f"privacy.target_epsilon={args.epsilon}"]
        cfg = load_config(args.config, over + METHOD_SETTINGS.get(method, []) + args.set)
        out = Path(args.out) / method
        summary = run(cfg, out, resume=True, progress=False, log=lambda s: None)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        curves[method] = rows
        f = summary["final"]
        print(
            f"{method:>8}: ε = {summary['max_epsilon']:.3f}, "
            f"σ = {summary['noise_multiplier']:.3f}, "
            f"balanced acc {f.get('balanced_accuracy', float('nan')):.3f}, "
            f"acc {f.get('accuracy', float('nan')):.3f}, up {summary['bytes_up'] / 1024:.1f} KB"
        )
        print(
            "          per round: "
            + " ".join(f"{r.get('eval_balanced_accuracy', float('nan')):.3f}" for r in rows)
        )
    _plot(curves, Path(args.out) / "compare.png", args.epsilon)
    return curves


def _plot(curves: dict[str, list[dict]], path: Path, epsilon: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, rows in curves.items():
        ax.plot(
            [r["round"] for r in rows],
            [r.get("eval_balanced_accuracy") for r in rows],
            "-o",
            label=method,
            ms=4,
        )
    ax.axhline(0.5, ls="--", color="gray", lw=1, label="majority class")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out balanced accuracy")
    ax.set_title(f"methods at ε = {epsilon:g} (same split, same budget)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
