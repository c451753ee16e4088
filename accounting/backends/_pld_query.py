"""Reading (ε, δ) off tilted compositions, both neighbouring directions
(:mod:`accounting.backends._pld_fft` composes; this module chooses the tilt and the window for
a query and reads the answer).

ε at δ is the smallest ε whose bound on δ(ε), with every added term (p_∞, the mass above the
window, the round-off bound) included, is at most δ; δ at ε is that bound. Both are the larger
of the remove and add directions.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.signal import lfilter
from scipy.special import log_ndtr, ndtr

from ._pld_fft import (
    Composed,
    Steps,
    WindowTooLarge,
    compose,
    direction,
    moments,
    tilt_for,
    top_for,
    window,
)

__all__ = ["epsilon_bound", "delta_bound"]

# The mass above the window is at most this share of the δ asked for.
_TOP_SHARE = 1e-6
# The single steps' far tails, sent to +∞, hold at most this share of the δ asked for.
_CAP_SHARE = 1e-6
# Passes of the ε search (a later one re-centres the tilt on the previous answer).
_PASSES = 3


def read_epsilon(c: Composed, delta: float) -> tuple[float, float, bool]:
    """Smallest ε with δ(ε) ≤ ``delta``, the round-off's share of δ there, and whether the
    answer is the window's bottom (the true ε may be lower).

    On [l_k, l_{k+1}], δ(ε) = U_{k+1} − e^{ε−l_k}·T_{k+1} with U_i = Σ_{j≥i} p_j and
    T_i = Σ_{j≥i} p_j·e^{−(j−i+1)h} = e^{−h}(p_i + T_{i+1}): a first-order filter from the top,
    every term at most 1. The added terms (p_∞, the missing mass, the round-off bound) are
    taken at l_k, their largest on the interval, so the solution is never below the truth."""
    p, losses, h = c.probs, c.losses(), c.interval
    decay = math.exp(-h)
    upper = np.cumsum(p[::-1])[::-1]
    scaled = lfilter([decay], [1.0, -decay], p[::-1])[::-1]
    extra = c.constant + c.error_at(losses)
    at = np.append(upper[1:] - scaled[1:], 0.0) + extra  # δ at each grid point
    above = np.nonzero(at > delta)[0]
    if not len(above):
        return max(float(losses[0]), 0.0), float(extra[0]) / delta, losses[0] > 0.0
    k = int(above[-1])
    if k == len(p) - 1:
        return math.inf, 1.0, False
    rest, t = upper[k + 1] + extra[k] - delta, scaled[k + 1]
    eps = losses[k + 1] if t <= 0.0 else min(losses[k] + math.log(rest / t), losses[k + 1])
    share = float(c.error_at(eps)) / delta
    return max(float(eps), 0.0), share, False


def read_delta(c: Composed, epsilon: float) -> float:
    losses = c.losses()
    if epsilon < losses[0]:  # the window is built to start below ε; never guess what is missing
        return 1.0
    live = losses > epsilon
    tail = float(np.sum(c.probs[live] * -np.expm1(epsilon - losses[live])))
    return min(1.0, tail + c.constant + float(c.error_at(epsilon)))


def gaussian_epsilon(mean: float, var: float, delta: float) -> float:
    """ε at δ of a privacy loss N(mean, var): the root of
    Φ((μ−ε)/s) − e^{ε−μ+s²/2}·Φ((μ−ε)/s − s) = δ (a first guess for the tilt)."""
    s = math.sqrt(var)

    def excess(eps: float) -> float:
        z = (mean - eps) / s
        return float(ndtr(z) - math.exp(min(eps - mean + var / 2 + log_ndtr(z - s), 700.0)))

    hi = mean + s * math.sqrt(2.0 * math.log(1.0 / delta))
    if excess(hi) > delta:
        return hi
    lo = mean - 10.0 * s
    return brentq(lambda e: excess(e) - delta, lo, hi, xtol=1e-3 * s) if excess(lo) > delta else lo


def _epsilon_direction(steps: Steps, delta: float, guess: float,
                       max_bins: int | None) -> float:  # fmt: skip
    """ε at δ in one direction, the tilt centred on ``guess``. A pass whose round-off bound is
    more than 0.1 % of δ at its answer, or whose answer is the window's bottom, is repeated
    with the tilt centred on that answer (or lower). Every pass gives a valid bound; the
    smallest is returned."""
    m0 = moments(steps, 0.0)
    best = math.inf
    for _ in range(_PASSES):
        m = tilt_for(steps, guess)
        budget = _TOP_SHARE * delta
        try:
            lo, hi = window(steps, m, min(guess, m0.mean), top_for(steps, m, budget), max_bins)
        except WindowTooLarge:
            if math.isfinite(best):
                break  # a refinement that does not fit: keep the answer already found
            raise
        eps, share, at_bottom = read_epsilon(compose(steps, m.lam, lo, hi, budget), delta)
        best = min(best, eps)
        if at_bottom:
            guess = m0.mean  # centre the next pass lower
        elif share <= 1e-3 or not math.isfinite(eps):
            break
        elif eps > guess:
            guess = eps  # the tilt was centred below the answer
        else:
            guess = m0.mean + 0.5 * (eps - m0.mean)  # the answer is round-off bound: aim lower
    return best


def _delta_direction(steps: Steps, epsilon: float, budget: float, max_bins: int | None) -> float:
    """δ at ε in one direction, the tilt centred on ε, at most ``budget`` above the window."""
    m = tilt_for(steps, epsilon)
    h = steps[0][0].interval
    lo, hi = window(steps, m, epsilon - h, top_for(steps, m, budget), max_bins)
    return read_delta(compose(steps, m.lam, lo, hi, budget), epsilon)


def epsilon_bound(blocks, delta: float, interval: float, *, max_bins: int | None = None,
                  hint: float | None = None) -> float:  # fmt: skip
    """Upper bound on ε at δ, the larger over the remove and add directions.

    The remove direction first (its ε is usually the larger); the add direction's δ at that ε
    is then one query, and only when it exceeds δ is the add direction's ε searched for (with
    the tilt centred above the remove direction's answer). ``hint``, an upper bound on ε such
    as RDP's, caps the first guess."""
    cap = _CAP_SHARE * delta
    remove = direction(blocks, interval, True, cap)
    m0 = moments(remove, 0.0)
    guess = gaussian_epsilon(m0.mean, m0.var, delta)
    if hint is not None and math.isfinite(hint):
        guess = min(guess, hint)
    eps = _epsilon_direction(remove, delta, guess, max_bins)
    if not math.isfinite(eps):
        return eps
    add = direction(blocks, interval, False, cap)
    if _delta_direction(add, eps, cap, max_bins) <= delta:
        return eps
    return max(eps, _epsilon_direction(add, delta, eps, max_bins))


def delta_bound(blocks, epsilon: float, interval: float, *, max_bins: int | None = None,
                hint: float | None = None) -> float:  # fmt: skip
    """Upper bound on δ at ε, the larger over the remove and add directions. The far tails
    sent to +∞ hold a millionth of ``hint`` (an upper bound on δ; RDP's if none is given);
    while that is more than a thousandth of the answer, again with a millionth of the
    answer."""
    if hint is None:
        from ..events import Component
        from ..history import history_of, rdp_delta

        hint = rdp_delta(history_of(Component(q, s, n) for q, s, n in blocks), epsilon)
    cap = _CAP_SHARE * min(1.0, hint)
    best = 1.0
    for _ in range(3):
        best = min(best, max(
            _delta_direction(direction(blocks, interval, remove, cap), epsilon, cap, max_bins)
            for remove in (True, False)
        ))  # fmt: skip
        if cap <= 1e-3 * best:
            break
        cap = _CAP_SHARE * best
    return best
