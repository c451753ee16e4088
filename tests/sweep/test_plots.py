"""The sweep's figures: non-private never joined to the last ε, methods never joined on the
bytes plot, legends outside the axes, error bars explained."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dpfedlora.experiments.report import _draw_vs_bytes, _draw_vs_epsilon, _seeds_note  # noqa: E402

GROUPED = [
    {"method": m, "target_epsilon": e, "seeds": 3, "balanced_accuracy": 0.8 + 0.01 * i,
     "balanced_accuracy_std": 0.02, "bytes_up": b}
    for i, (m, b) in enumerate((("fedit", 1e6), ("ffa", 5e5), ("rolora", 5e5), ("fedsb", 8e4)))
    for e in (1.0, 3.0, 8.0, math.inf)
]  # fmt: skip


def _lines(ax) -> list:
    """Data lines with more than one point (error-bar caps and bars are separate artists)."""
    return [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1 and ln.get_linestyle() != "None"]


def test_non_private_is_a_separate_marker_never_joined_to_the_last_epsilon():
    fig, ax = plt.subplots()
    _draw_vs_epsilon(ax, GROUPED, "balanced_accuracy")
    joined = [ln for ln in _lines(ax) if ln.get_color() != "0.6"]  # the divider aside
    assert len(joined) == 4  # one line per method over ε 1, 3, 8
    for ln in joined:
        xs = ln.get_xdata()
        assert len(xs) == 3 and max(xs) < 8 * 1.2  # no point at the non-private position
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["1", "3", "8", "non-private"]
    # overlapping methods are dodged: four distinct x positions at ε = 3
    at3 = {round(float(x), 4) for ln in joined for x in ln.get_xdata() if 2.5 < x < 3.5}
    assert len(at3) == 4
    plt.close(fig)


def test_bytes_plot_joins_no_methods_and_separates_equal_uploads():
    fig, ax = plt.subplots()
    _draw_vs_bytes(ax, GROUPED, "balanced_accuracy")
    assert _lines(ax) == []
    points = [
        (float(ln.get_xdata()[0]), ln.get_marker())
        for ln in ax.get_lines()
        if len(ln.get_xdata()) == 1 and ln.get_linestyle() == "None"
    ]
    xs_ffa = {x for x, m in points if m == "D"}  # ffa: 5e5 bytes, like rolora
    xs_rolora = {x for x, m in points if m == "^"}
    assert xs_ffa and xs_rolora and not xs_ffa & xs_rolora
    plt.close(fig)


def test_error_bars_are_explained():
    assert _seeds_note(GROUPED) == "error bars: std over 3 seeds"
    assert _seeds_note([{**GROUPED[0], "seeds": 1}, GROUPED[1]]) == "error bars: std over 1-3 seeds"
