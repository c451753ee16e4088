"""One-run privacy auditing bound (Steinke, Nasr, Jagielski, NeurIPS 2023, arXiv:2305.08846).

m canaries are each included with probability 1/2; after one training run an attack guesses
"in" or "out" for r of them and gets v right. If the mechanism is (ε, δ)-DP, the number of
correct guesses is dominated by Binomial(r, e^ε / (1 + e^ε)) up to a δ term (Appendix D):

    q        = 1 / (1 + e^-ε)
    β        = P[Binomial(r, q) >= v]
    α        = max_{i = 1..v} P[v > Binomial(r, q) >= v - i] / i
    p(ε)     = min(1, β + α · δ · 2m)

The reported lower bound is the largest ε whose p-value is still below 1 - confidence: with that
confidence the mechanism is not (ε, δ)-DP. Several public copies of the paper's code drop the
δ term; we keep it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.stats import binom

__all__ = ["one_run_p_value", "one_run_epsilon_lower_bound"]


def _check(m: int, r: int, v: int) -> None:
    if not (isinstance(m, int) and isinstance(r, int) and isinstance(v, int)):
        raise TypeError("`canaries`, `guesses` and `correct` must be integers.")
    if not 0 <= v <= r <= m or m < 1:
        raise ValueError(
            "need 0 <= correct <= guesses <= canaries and canaries >= 1. "
            f"Found m={m}, r={r}, v={v}."
        )


def one_run_p_value(
    *, canaries: int, guesses: int, correct: int, epsilon: float, delta: float
) -> float:
    """p-value of observing ``correct`` right guesses out of ``guesses`` under (ε, δ)-DP."""
    m, r, v = canaries, guesses, correct
    _check(m, r, v)
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(binom.sf(v - 1, r, q))  # P[X >= v]
    alpha = 0.0
    if delta > 0:
        # P[v > X >= v - i] = cdf(v - 1) - cdf(v - i - 1)
        cdf = binom.cdf(np.arange(-1, v), r, q)  # cdf[j + 1] = P[X <= j]
        i = np.arange(1, v + 1)
        alpha = float(np.max((cdf[v] - cdf[v - i]) / i))
    return min(1.0, beta + alpha * delta * 2 * m)


def one_run_epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """Largest ε rejected at ``confidence``: the audited run is not (ε, δ)-DP. 0 if none."""
    _check(canaries, guesses, correct)
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1). Found {confidence!r}.")
    alpha = 1 - confidence

    def excess(eps: float) -> float:
        return (
            one_run_p_value(
                canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta
            )
            - alpha
        )

    if excess(0.0) >= 0:
        return 0.0
    hi = 1.0
    while excess(hi) < 0:
        hi *= 2
        if hi > 1e3:  # pragma: no cover - unreachable for r < 1e6
            return hi
    return float(brentq(excess, 0.0, hi, xtol=1e-6))
