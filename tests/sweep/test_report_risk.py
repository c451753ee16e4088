"""The sweep report's attack-risk column and plot: TPR at 1 % FPR from each cell's ledger (like
its ε), from its summary where the ledger is gone, blank where neither has it; non-private
cells at TPR 1, a separate marker never joined to a line."""

from __future__ import annotations

import csv
import json
import math
import shutil

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from accounting import Ledger  # noqa: E402
from dpfedlora.experiments.report import TPR, _draw_vs_tpr, build_report, write_report  # noqa: E402
from tests.helpers import tiny_cfg  # noqa: E402


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """One finished private run, the template of every cell below."""
    from dpfedlora.federation import run

    out = tmp_path_factory.mktemp("cell") / "a"
    run(tiny_cfg("server.rounds=1", "train.local_steps=2"), out, progress=False, log=print)
    return out


def _sweep(tmp_path, cell, names=("a",)):
    out = tmp_path / "sw"
    for name in names:
        shutil.copytree(cell, out / "cells" / name)
    entries = [{"overrides": [["seed", 0]], "config_hash": n, "dir": f"cells/{n}"} for n in names]
    (out / "sweep.json").write_text(json.dumps({"cells": entries}))
    return out


def _edit_summary(cell_dir, **changes):
    path = cell_dir / "summary.json"
    s = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            s.pop(k, None)
        else:
            s[k] = v
    path.write_text(json.dumps(s))


def test_the_tpr_column_comes_from_the_ledger_and_is_written(tmp_path, cell):
    out = _sweep(tmp_path, cell)
    want = Ledger(cell / "ledger.jsonl").max_risk().to_json()["tpr_at_fpr"]["0.01"]
    # an old cell: written before summaries had risk; and a tampered one: the ledger wins
    _edit_summary(out / "cells" / "a", risk=None)
    rows, groups = build_report(out)
    assert rows[0][TPR] == pytest.approx(want) and groups[0][TPR] == pytest.approx(want)
    assert 0.01 <= want < 1.0
    write_report(out)
    (row,) = [r for r in csv.DictReader(open(out / "report.csv")) if r["kind"] == "cell"]
    assert float(row[TPR]) == pytest.approx(want, rel=1e-3)
    md = (out / "report.md").read_text()
    assert "| spent ε (ledger) | TPR@1%FPR |" in md and f"{want:.4g}" in md
    assert (out / "plots" / "balanced_accuracy_vs_tpr.png").exists()
    assert (out / "plots" / "balanced_accuracy_vs_epsilon.png").exists()


def test_without_a_ledger_the_summary_risk_else_blank(tmp_path, cell):
    out = _sweep(tmp_path, cell, names=("a", "b"))
    for name in ("a", "b"):
        (out / "cells" / name / "ledger.jsonl").unlink()
    risk = {"tpr_at_fpr": {"0.001": 0.002, "0.01": 0.0345, "0.1": 0.2}, "advantage": 0.1}
    _edit_summary(out / "cells" / "a", risk=risk)
    _edit_summary(out / "cells" / "b", risk=None)
    rows, _ = build_report(out)
    by = {r["cell"]: r for r in rows}
    assert by["a"][TPR] == 0.0345 and TPR not in by["b"]
    write_report(out)  # a blank cell does not break the report
    cells = {r["cell"]: r for r in csv.DictReader(open(out / "report.csv")) if r["kind"] == "cell"}
    assert cells["a"][TPR] == "0.0345" and cells["b"][TPR] == ""


def test_a_non_private_cell_is_at_tpr_1(tmp_path, cell):
    import yaml

    out = _sweep(tmp_path, cell)
    cfg_path = out / "cells" / "a" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["privacy"]["mode"] = "none"
    cfg_path.write_text(yaml.safe_dump(cfg))
    rows, groups = build_report(out)
    assert rows[0][TPR] == 1.0 and math.isinf(rows[0]["spent_epsilon"]) and groups[0][TPR] == 1.0


def test_the_tpr_plot_joins_each_method_over_epsilon_and_never_joins_non_private():
    grouped = [
        {"method": m, "target_epsilon": e, "seeds": 2, "accuracy": 0.7 + 0.01 * i,
         "accuracy_std": 0.01, TPR: t}
        for i, m in enumerate(("ffa", "fedsb"))
        for e, t in ((1.0, 0.02), (3.0, 0.05), (8.0, 0.6), (math.inf, 1.0))
    ]  # fmt: skip
    fig, ax = plt.subplots()
    _draw_vs_tpr(ax, grouped, "accuracy")
    # lines through more than one point, the TPR = FPR divider aside
    lines = [
        ln
        for ln in ax.get_lines()
        if len(ln.get_xdata()) > 1 and ln.get_linestyle() != "None" and ln.get_color() != "0.6"
    ]
    assert len(lines) == 2
    for ln in lines:
        xs = list(ln.get_xdata())
        assert len(xs) == 3 and max(xs) < 0.7  # ordered by ε; no point at the non-private TPR 1
        assert xs == sorted(xs)
    assert ax.get_xscale() == "log"
    plt.close(fig)
