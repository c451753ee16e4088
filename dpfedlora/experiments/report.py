"""``dpfedlora report DIR``: tables and plots of a sweep.

One row per cell and one per group of cells that differ only in ``seed`` (mean ± std). The
spent ε of a cell is replayed from its own ledger (not copied from its summary), so the report
shows what was actually recorded; every cell's spent ε must be at most its target. So is the
attack risk beside it: the worst client's bound on a membership-inference attack's TPR at 1 %
FPR (federation.risk); a cell without a ledger falls back to its summary's ``risk``, else
blank. Non-private cells: ε = inf and TPR 1 (no bound).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from accounting import Ledger

from ..progress import DISPLAY_FPR
from .sweep import RESUMABLE_STOPS

__all__ = ["build_report", "write_report"]

METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "loss", "perplexity")
TPR = "tpr_at_1pct_fpr"  # the report's column: the worst client's attack TPR at 1 % FPR


def _cell_row(out: Path, entry: dict[str, Any]) -> dict[str, Any]:
    import yaml

    cell_dir = out / entry["dir"]
    overrides = {k: v for k, v in entry["overrides"]}
    row: dict[str, Any] = {"cell": Path(entry["dir"]).name, **overrides}
    if (cell_dir / "error.txt").exists() and not (cell_dir / "summary.json").exists():
        row["status"] = "failed: " + (cell_dir / "error.txt").read_text().strip()
        return row
    if not (cell_dir / "summary.json").exists():
        row["status"] = "incomplete"
        return row
    summary = json.loads((cell_dir / "summary.json").read_text())
    cfg = yaml.safe_load((cell_dir / "config.yaml").read_text())
    private = cfg["privacy"]["mode"] != "none"
    target = cfg["privacy"]["target_epsilon"] if private else math.inf
    spent, risk = math.inf, {TPR: 1.0}
    if private:
        ledger = Ledger(cell_dir / "ledger.jsonl", accountant=cfg["privacy"]["accountant"])
        spent = ledger.max_epsilon(delta=cfg["privacy"]["delta"])
        risk = _risk(ledger, summary)
    planned, completed = summary.get("rounds_planned"), summary["rounds_completed"]
    missed, round_seconds = _round_facts(cell_dir / "metrics.jsonl")
    status = "done"
    # A cell that trained less than planned is not comparable to its peers: it stays out of
    # the means. (A round interrupted after its write-ahead spend cannot be redone: its ε stays
    # counted, so a resumed cell may end a round short, or with a client skipped for budget.)
    if summary.get("stopped_reason") in RESUMABLE_STOPS:  # a rerun of the sweep continues it
        status = f"incomplete: {completed} of {planned} rounds ({summary['stopped_reason']})"
    elif planned is not None and completed < planned:
        status = f"short: {completed} of {planned} rounds ({summary.get('stopped_reason')})"
    elif missed:
        status = f"short: {missed} client-round(s) skipped for budget or failed"
    row.update(
        status=status,
        method=cfg["method"]["name"],
        seed=cfg["seed"],
        target_epsilon=math.inf if target is None else float(target),
        spent_epsilon=spent,
        **risk,
        bytes_up=summary["bytes_up"],
        bytes_down=summary["bytes_down"],
        rounds=summary["rounds_completed"],
        wall_seconds=summary["seconds"],  # the last process only
        round_seconds=round_seconds,  # every recorded round, across resumes
        **{m: summary["final"][m] for m in METRICS if m in summary["final"]},
    )
    return row


def _risk(ledger: Ledger, summary: dict[str, Any]) -> dict[str, float]:
    """The TPR column from the ledger, like ε; else from the summary (a cell whose ledger was
    removed); else nothing (blank)."""
    if ledger.path.exists():
        return {TPR: ledger.max_risk().to_json()["tpr_at_fpr"][DISPLAY_FPR]}
    tpr = (summary.get("risk") or {}).get("tpr_at_fpr", {}).get(DISPLAY_FPR)
    return {} if tpr is None else {TPR: float(tpr)}


def _round_facts(metrics: Path) -> tuple[int, float]:
    """Client-rounds refused for budget or failed, and the seconds spent in rounds, over every
    recorded round. (The summary's ``seconds`` covers only the process that wrote it, so a
    resumed cell would look faster than it was.)"""
    if not metrics.exists():
        return 0, math.nan
    missed, seconds = 0, 0.0
    for line in metrics.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            missed += len(r.get("skipped", [])) + len(r.get("faulty", []))
            seconds += float(r.get("seconds", math.nan))
    return missed, seconds


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return str(v)


def build_report(out: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out = Path(out)
    manifest = json.loads((out / "sweep.json").read_text())
    rows = [_cell_row(out, e) for e in manifest["cells"]]
    done = [r for r in rows if r.get("status") == "done"]
    grid_keys = sorted({k for e in manifest["cells"] for k, _ in e["overrides"]} - {"seed"})
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in done:
        key = (r["method"], r["target_epsilon"], *(json.dumps(r.get(k)) for k in grid_keys))
        groups.setdefault(key, []).append(r)
    grouped = []
    for key, members in groups.items():
        g: dict[str, Any] = {"method": key[0], "target_epsilon": key[1], "seeds": len(members)}
        for k in grid_keys:
            if k not in ("method.name", "privacy.target_epsilon", "privacy.mode"):
                g[k] = members[0].get(k)
        for m in (*METRICS, "spent_epsilon", TPR, "bytes_up", "round_seconds"):
            vals = [r[m] for r in members if m in r and not math.isinf(float(r[m]))]
            if vals:
                g[m] = statistics.fmean(vals)
                g[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            elif any(m in r for r in members):
                g[m] = math.inf
        grouped.append(g)
    grouped.sort(key=lambda g: (g["method"], g["target_epsilon"]))
    return rows, grouped


def write_report(out: str | Path) -> dict[str, Any]:
    out = Path(out)
    rows, grouped = build_report(out)
    cols = [
        "cell",
        "status",
        "method",
        "seed",
        "target_epsilon",
        "spent_epsilon",
        TPR,
        *[m for m in METRICS if any(m in r for r in rows)],
        "bytes_up",
        "bytes_down",
        "rounds",
        "wall_seconds",
        "round_seconds",
    ]
    with open(out / "report.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", *cols])
        for r in rows:
            w.writerow(["cell", *[_fmt(r.get(c, "")) for c in cols]])
        for g in grouped:
            w.writerow(["group", *[_fmt(g.get(c, "")) for c in cols]])
    shown = [m for m in METRICS if any(m in g for g in grouped)]
    metric = shown[0] if shown else None  # the plotted one
    md = _markdown(grouped, rows, shown)
    failed = [r for r in rows if r.get("status", "").startswith("failed")]
    if failed:
        md += ["", "Failed cells:", ""] + [f"- cell {r['cell']} {r['status']}" for r in failed]
    short = [r for r in rows if r.get("status", "").startswith("short")]
    if short:
        md += ["", "Cells not in the means (trained less than planned; move the directory out of "
               "cells/ and rerun the sweep to replace one):", ""]  # fmt: skip
        md += [f"- cell {r['cell']} {r['status']}" for r in short]
    waiting = [r for r in rows if r.get("status", "").startswith("incomplete")]
    if waiting:
        md += ["", "Incomplete cells (rerun the sweep to continue them):", ""]
        md += [f"- cell {r['cell']} {r['status']}" for r in waiting]
    (out / "report.md").write_text("\n".join(md) + "\n")
    if metric:
        _plots(grouped, out / "plots", metric, title=_title(out, rows))
    violations = [
        r for r in rows if "spent_epsilon" in r and r["spent_epsilon"] > r["target_epsilon"]
    ]
    return {
        "cells": len(rows),
        "groups": len(grouped),
        "failed": len(failed),
        "short": len(short),
        "incomplete": len(waiting),
        "violations": len(violations),
        "metric": metric,
    }


def _markdown(
    grouped: list[dict[str, Any]], rows: list[dict[str, Any]], metrics: list[str]
) -> list[str]:
    """Per group over seeds (mean ± std), then one row per cell."""
    # "s in rounds": training and evaluation of every recorded round (set-up not included)
    head = ["method", "target ε", "spent ε (ledger)", "TPR@1%FPR", *metrics, "bytes up"]
    head += ["s in rounds"]
    md = ["| " + " | ".join([*head, "seeds"]) + " |", "|" + "---|" * (len(head) + 1)]
    for g in grouped:
        cells = [g["method"], _fmt(g["target_epsilon"]), _fmt(g.get("spent_epsilon"))]
        cells += [_fmt(g.get(TPR, ""))]
        cells += [f"{g[m]:.3f} ± {g.get(m + '_std', 0.0):.3f}" if m in g else "" for m in metrics]
        cells += [f"{g.get('bytes_up', 0):.0f}", f"{g.get('round_seconds', math.nan):.0f}"]
        md.append("| " + " | ".join([*cells, str(g["seeds"])]) + " |")
    md += ["", "| " + " | ".join(["cell", "seed", *head]) + " |", "|" + "---|" * (len(head) + 2)]
    for r in sorted(
        rows, key=lambda r: (r.get("method", ""), r.get("target_epsilon", 0), r.get("seed", 0))
    ):
        if r.get("status") != "done":
            continue
        cells = [r["cell"], str(r.get("seed", "")), r["method"], _fmt(r["target_epsilon"])]
        cells += [_fmt(r.get("spent_epsilon")), _fmt(r.get(TPR, ""))]
        cells += [f"{r[m]:.3f}" if m in r else "" for m in metrics]
        cells += [f"{r.get('bytes_up', 0):.0f}", f"{r.get('round_seconds', math.nan):.0f}"]
        md.append("| " + " | ".join(cells) + " |")
    return md


# y-axis labels with their units
YLABELS = {
    "balanced_accuracy": "balanced accuracy, held-out (fraction)",
    "accuracy": "accuracy, held-out (fraction)",
    "macro_f1": "macro-F1, held-out (fraction)",
    "loss": "loss, held-out (nats per example)",
    "perplexity": "perplexity, held-out",
}
MARKERS = "osD^vP*X"


def _title(out: Path, rows: list[dict[str, Any]]) -> str:
    """Names the sweep, the data and the model, from the first finished cell's config."""
    import yaml

    manifest = json.loads((out / "sweep.json").read_text())
    spec = {}
    if Path(manifest.get("sweep_file", "")).is_file():
        spec = yaml.safe_load(Path(manifest["sweep_file"]).read_text()) or {}
    name = spec.get("name") or Path(manifest.get("sweep_file", str(out))).stem
    done = next((r for r in rows if r.get("status") == "done"), None)
    if done is None:
        return str(name)
    cfg = yaml.safe_load((out / "cells" / done["cell"] / "config.yaml").read_text())
    short = [str(cfg[k]["name"]).removeprefix("builtin:") for k in ("model", "data")]
    return f"{name}: {short[0]} on {short[1]}"


def _seeds_note(grouped: list[dict[str, Any]]) -> str:
    n = sorted({g["seeds"] for g in grouped})
    span = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    return f"error bars: std over {span} seed{'s' if n[-1] > 1 else ''}"


def _plots(grouped: list[dict[str, Any]], out: Path, metric: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for kind, draw in (
        ("epsilon", _draw_vs_epsilon), ("tpr", _draw_vs_tpr), ("bytes", _draw_vs_bytes)
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        draw(ax, grouped, metric)
        ax.set_ylabel(YLABELS.get(metric, metric.replace("_", " ")))
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=10)
        # outside the axes, so a legend never covers a point
        ax.legend(
            fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=_seeds_note(grouped),
            title_fontsize=8,
        )  # fmt: skip
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(out / f"{metric}_vs_{kind}.{ext}", dpi=110, bbox_inches="tight")
        plt.close(fig)


def _errorbar(ax, pts: list[tuple[float, dict[str, Any]]], metric: str, **kw) -> None:
    ax.errorbar(
        [x for x, _ in pts],
        [g.get(metric, math.nan) for _, g in pts],
        yerr=[g.get(metric + "_std", 0) for _, g in pts],
        capsize=3,
        ms=6,
        **kw,
    )


def _dodge(i: int, n: int, width: float = 0.06) -> float:
    """Multiplicative x offset of series i of n on a log axis, so overlapping series stay
    visible side by side."""
    return math.exp(width * (i - (n - 1) / 2))


def _draw_vs_epsilon(ax, grouped: list[dict[str, Any]], metric: str) -> None:
    """One line per method over the finite target ε; non-private as a separate marker at the
    right, past a dotted divider, never joined to ε = max by a line."""
    finite = sorted({g["target_epsilon"] for g in grouped if not math.isinf(g["target_epsilon"])})
    inf_x = (max(finite) * 2.5) if finite else 1.0
    methods = sorted({g["method"] for g in grouped})
    for i, method in enumerate(methods):
        d, style = _dodge(i, len(methods)), dict(color=f"C{i}", marker=MARKERS[i % len(MARKERS)])
        pts = sorted(
            ((g["target_epsilon"] * d, g) for g in grouped
             if g["method"] == method and not math.isinf(g["target_epsilon"])),
            key=lambda t: t[0],
        )  # fmt: skip
        if pts:
            _errorbar(ax, pts, metric, linestyle="-", label=method, **style)
        inf_pts = [(inf_x * d, g) for g in grouped
                   if g["method"] == method and math.isinf(g["target_epsilon"])]  # fmt: skip
        if inf_pts:
            _errorbar(ax, inf_pts, metric, linestyle="none", mfc="none",
                      label=None if pts else method, **style)  # fmt: skip
    ax.set_xscale("log")
    ax.minorticks_off()
    has_inf = any(math.isinf(g["target_epsilon"]) for g in grouped)
    if has_inf and finite:
        ax.axvline(math.sqrt(max(finite) * inf_x), color="0.6", linestyle=":", linewidth=1)
    ticks = finite + ([inf_x] if has_inf else [])
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in finite] + (["non-private"] if has_inf else []))
    ax.set_xlabel("target ε per client (δ from the config); open markers: non-private")


def _draw_vs_tpr(ax, grouped: list[dict[str, Any]], metric: str) -> None:
    """Utility against the attack risk the ledger allows: one line per method over its target
    ε (ordered by ε; x = the worst client's TPR bound at 1 % FPR, mean over seeds); non-private
    (TPR 1, no bound) an open marker never joined to a line. The dotted line at x = 0.01 is
    TPR = FPR: an attack no better than guessing."""
    methods = sorted({g["method"] for g in grouped})
    for i, method in enumerate(methods):
        d, style = _dodge(i, len(methods)), dict(color=f"C{i}", marker=MARKERS[i % len(MARKERS)])
        mine = sorted(
            (g for g in grouped if g["method"] == method and TPR in g),
            key=lambda g: g["target_epsilon"],
        )
        pts = [(g[TPR] * d, g) for g in mine if not math.isinf(g["target_epsilon"])]
        if pts:
            _errorbar(ax, pts, metric, linestyle="-", label=method, **style)
        inf_pts = [(g[TPR] * d, g) for g in mine if math.isinf(g["target_epsilon"])]
        if inf_pts:
            _errorbar(ax, inf_pts, metric, linestyle="none", mfc="none",
                      label=None if pts else method, **style)  # fmt: skip
    ax.axvline(float(DISPLAY_FPR), color="0.6", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(float(DISPLAY_FPR) * 0.8, 1.25)
    ax.set_xlabel(
        "membership-inference TPR at 1 % FPR, worst client (ledger bound; log scale)\n"
        "open markers: non-private (no bound); dotted: TPR = FPR (guessing)"
    )


def _draw_vs_bytes(ax, grouped: list[dict[str, Any]], metric: str) -> None:
    """Bytes depend on the method, not on ε: one point per (method, ε), no lines (different
    methods are different systems), colour = ε, marker = method; the ε of one method sit side by
    side."""
    methods = sorted({g["method"] for g in grouped})
    epsilons = sorted({g["target_epsilon"] for g in grouped})
    for i, eps in enumerate(epsilons):
        for g in grouped:
            if g["target_epsilon"] != eps:
                continue
            j = methods.index(g["method"])
            # methods that upload the same bytes (FFA-LoRA and RoLoRA) sit side by side too
            same = sorted({h["method"] for h in grouped if h.get("bytes_up") == g.get("bytes_up")})
            x = g.get("bytes_up", 0) * _dodge(i, len(epsilons), width=0.05)
            x *= _dodge(same.index(g["method"]), len(same), width=0.25)
            _errorbar(ax, [(x, g)], metric, linestyle="none", color=f"C{i}",
                      marker=MARKERS[j % len(MARKERS)],
                      mfc="none" if math.isinf(eps) else f"C{i}")  # fmt: skip
    for i, eps in enumerate(epsilons):  # colour legend entries
        label = "non-private" if math.isinf(eps) else f"ε = {eps:g}"
        ax.plot([], [], "s", color=f"C{i}", label=label)
    for j, method in enumerate(methods):  # marker legend entries
        ax.plot([], [], MARKERS[j % len(MARKERS)], color="0.3", label=method, linestyle="none")
    ax.set_xscale("log")
    ax.set_xlabel("bytes uploaded per run (all clients, all rounds; log scale)")
