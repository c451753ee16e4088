"""One-run privacy auditing with f-DP (Mahloujifar, Melis, Chaudhuri, ICML 2025, arXiv:2410.22235).

The same guessing game as :mod:`accounting.audit`: m canaries, each included with probability
1/2; after one run the attack makes c' guesses (abstaining on the rest) and gets c right. Where
Steinke, Nasr and Jagielski bound the number of correct guesses through (ε, δ), this bound uses
a whole trade-off curve f: if the mechanism is f-DP, Theorem 3.1 of the paper ties the
probabilities p_i of exactly i correct guesses together through f̄(x) = 1 - f(x), and their
Algorithm 3 turns that into a test. With r, h standing for the tails
α_i = Σ_{j≥i} (j/m)·p_j and β_i = Σ_{j≥i} ((c'-j)/m)·p_j when P[≥ c correct] = τ::

    r[c] = τ·c/m,   h[c] = τ·(c'-c)/m
    for i = c-1 .. 0:
        h[i] = max(h[i+1], (k-1)·f̄⁻¹(r[i+1]))       # β is non-increasing in i
        r[i] = r[i+1] + i/(c'-i)·(h[i] - h[i+1])
    reject "f-DP" at confidence 1 - τ if r[0] + h[0] > c'/m   (α_0 + β_0 is exactly c'/m)

(k is the number of values a canary can take; membership is k = 2.) The listing as converted
from the paper prints "c/m" in the last line; the proof and the authors' code compare with c'/m.

Two families of curves are offered, each ordered from private to not:

* ``gdp``: μ-GDP, f̄(x) = Φ(Φ⁻¹(x) + μ). The paper's empirical privacy: the largest μ the test
  rejects, reported as the ε(δ) of that Gaussian curve (Balle and Wang 2018). It says "the run is
  not μ-GDP"; turning μ into ε assumes the curve is Gaussian-shaped (DP-SGD's is close to it).
* ``approx``: the (ε, δ) curve itself (Proposition 2.3),
  f̄(x) = min(1, δ + e^ε·x, 1 - e^-ε·(1 - δ - x)): the largest ε the test rejects means
  "not (ε, δ)-DP", the same statement as the Steinke–Nasr–Jagielski bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.special import ndtr, ndtri

__all__ = [
    "FDP_FAMILIES",
    "fdp_rejects",
    "fdp_one_run_lower_bound",
    "gdp_epsilon",
    "gdp_trade_off",
    "approx_dp_trade_off",
]

Curve = tuple[Callable[[float], float], Callable[[float], float]]  # (f̄, f̄⁻¹)


def gdp_trade_off(mu: float) -> Curve:
    """(f̄, f̄⁻¹) of μ-GDP: f̄(x) = Φ(Φ⁻¹(x) + μ)."""

    def bar(x: float) -> float:
        return float(ndtr(ndtri(min(max(x, 0.0), 1.0)) + mu))

    def inv(y: float) -> float:
        return float(ndtr(ndtri(min(max(y, 0.0), 1.0)) - mu))

    return bar, inv


def approx_dp_trade_off(epsilon: float, delta: float) -> Curve:
    """(f̄, f̄⁻¹) of (ε, δ)-DP: the smaller of two lines through (0, δ) and (1 - δ, 1), capped at
    1; its inverse is the larger of the lines' inverses, clipped to [0, 1]."""
    e = math.exp(epsilon)

    def bar(x: float) -> float:
        return min(1.0, delta + e * x, 1.0 - (1.0 - delta - x) / e)

    def inv(y: float) -> float:
        return min(1.0, max(0.0, (y - delta) / e, 1.0 - delta - e * (1.0 - y)))

    return bar, inv


def gdp_epsilon(mu: float, delta: float) -> float:
    """ε at δ of μ-GDP (exact: δ(ε) = Φ(-ε/μ + μ/2) - e^ε·Φ(-ε/μ - μ/2), Balle and Wang 2018)."""
    if not 0 < delta < 1:
        raise ValueError(f"`delta` must be in (0, 1). Found {delta!r}.")
    if mu <= 0:
        return 0.0

    def excess(eps: float) -> float:
        return float(ndtr(-eps / mu + mu / 2) - math.exp(eps) * ndtr(-eps / mu - mu / 2)) - delta

    if excess(0.0) <= 0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0:
        hi *= 2
    return float(brentq(excess, 0.0, hi, xtol=1e-10))


def _check(m: int, guesses: int, correct: int, alphabet: int, tau: float) -> None:
    if not all(isinstance(x, int) for x in (m, guesses, correct, alphabet)):
        raise TypeError("`canaries`, `guesses`, `correct` and `alphabet` must be integers.")
    if not 0 <= correct <= guesses <= m or m < 1:
        raise ValueError(
            "need 0 <= correct <= guesses <= canaries and canaries >= 1. "
            f"Found canaries={m}, guesses={guesses}, correct={correct}."
        )
    if alphabet < 2:
        raise ValueError(f"`alphabet` must be at least 2. Found {alphabet}.")
    if not 0 < tau < 1:
        raise ValueError(f"1 - confidence must be in (0, 1). Found {tau!r}.")


def fdp_rejects(
    inverse: Callable[[float], float],
    *,
    canaries: int,
    guesses: int,
    correct: int,
    tau: float,
    alphabet: int = 2,
) -> bool:
    """True when an f-DP mechanism (``inverse`` = f̄⁻¹) makes ``correct`` or more right guesses
    out of ``guesses`` with probability at most ``tau`` (Algorithm 3 and Theorem 3.2)."""
    m, cp, c = canaries, guesses, correct
    _check(m, cp, c, alphabet, tau)
    r, h = tau * c / m, tau * (cp - c) / m
    for i in range(c - 1, -1, -1):
        h_new = max(h, (alphabet - 1) * inverse(min(r, 1.0)))
        r += i / (cp - i) * (h_new - h)
        h = h_new
    return r + h > cp / m


@dataclass(frozen=True)
class _Family:
    """Curves ordered by one parameter: larger = less private."""

    make: Callable[[float, float], Curve]  # (parameter, δ) -> curve
    to_epsilon: Callable[[float, float], float]  # (parameter, δ) -> ε


FDP_FAMILIES: dict[str, _Family] = {
    "gdp": _Family(lambda mu, delta: gdp_trade_off(mu), gdp_epsilon),
    "approx": _Family(approx_dp_trade_off, lambda eps, delta: eps),
}


def fdp_one_run_lower_bound(
    *,
    canaries: int,
    guesses: int,
    correct: int,
    delta: float,
    confidence: float = 0.95,
    family: str = "gdp",
    alphabet: int = 2,
    tol: float = 1e-6,
) -> tuple[float, float]:
    """(parameter, ε): the largest μ (``gdp``) or ε (``approx``) whose curve the test rejects at
    ``confidence``, and its ε at δ. (0, 0) when even a perfectly private curve is not rejected."""
    if family not in FDP_FAMILIES:
        raise ValueError(f"unknown f-DP family {family!r}. Use one of {sorted(FDP_FAMILIES)}.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1). Found {confidence!r}.")
    fam, tau = FDP_FAMILIES[family], 1.0 - confidence
    _check(canaries, guesses, correct, alphabet, tau)

    def rejects(theta: float) -> bool:
        inverse = fam.make(theta, delta)[1]
        return fdp_rejects(
            inverse, canaries=canaries, guesses=guesses, correct=correct, tau=tau,
            alphabet=alphabet,
        )  # fmt: skip

    if not rejects(0.0):
        return 0.0, 0.0
    lo, hi = 0.0, 1.0
    while rejects(hi):  # the test rejects a whole interval [0, θ*): larger θ is weaker
        lo, hi = hi, hi * 2
        if hi > 1e3:  # pragma: no cover - unreachable with finitely many canaries
            return math.inf, math.inf
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rejects(mid) else (lo, mid)
    return lo, fam.to_epsilon(lo, delta)
