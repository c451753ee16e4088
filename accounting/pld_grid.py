"""Privacy-loss distributions on a grid, in numpy: the fast tight accountant.

A history of Poisson-subsampled Gaussian blocks (q, σ, steps) is composed as follows, for each
of the two neighbouring directions (remove and add one example):

1. **One step, discretised pessimistically** ("connect the dots", Doroshenko, Ghazi, Kamath,
   Kumar, Manurangsi 2022, Algorithm 1, fixed-gap form). The hockey-stick divergence δ(ε) of one
   step has a closed form at every grid point ε = i·h; the discrete distribution matches δ at
   the grid points and is linear in e^ε between them. δ(e^ε) is convex, so the discrete δ is
   never below the true one: the discrete pair dominates the mechanism. Mass above the grid
   goes to +∞ (counted in δ directly), mass below it is rounded up to the lowest point.
2. **All blocks at once, in the Fourier domain**: the composed distribution is the convolution
   of every step's, so its transform is Π_b F_b^{n_b}, one transform per block and a single
   inverse. The window that the inverse transform covers is chosen with a Chernoff bound on
   the sum's tails (mass outside it at most τ); that mass aliases into the window, so τ is
   added to the mass at +∞ and the result stays an upper bound (the aliased mass can only add
   to δ, the missing mass is covered by τ).
3. ε at δ is the smallest ε whose discrete hockey-stick divergence is at most δ, the larger of
   the two directions.

Why not dp-accounting's PLD directly: it builds one step with a Python loop over grid points
and composes block by block, with a Chernoff window per block from 40 scalar log-sum-exps; the
20-block, 10,000-step history of ``benchmarks/bench_accounting.py`` took 7.95 s at interval 1e-4
there, against 0.54 s here at the same interval (``bench_accounting.py --pld-intervals``).
The mathematics is the same; tests compare both on random histories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft
from scipy.signal import lfilter
from scipy.special import log_ndtr, ndtr

__all__ = [
    "StepPLD",
    "step_pld",
    "compose_epsilon",
    "compose_delta",
    "window_bins",
    "TAIL_MASS",
]

# Mass allowed outside the composed window (both tails together); added to δ (dp-accounting's
# default for self-composition is the same 1e-15).
TAIL_MASS = 1e-15
# The single-step grid reaches 10 standard deviations past both Gaussian centres: the noise
# mass beyond is at most Φ̄(10) ≈ 7.6e-24 (dp-accounting's default bound is e^-50 ≈ 2e-22). Mass
# above the grid goes to +∞ (exactly δ at the top point); mass below is rounded up to the lowest.
_Z = 10.0


@dataclass(frozen=True)
class StepPLD:
    """One step's discrete privacy-loss distribution in one direction: probabilities of the
    losses (lower + i)·interval, and the mass at +∞."""

    lower: int
    probs: np.ndarray
    infinity: float
    interval: float


def _remove_deltas(eps: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """δ(ε) of P = (1−q)N(0,σ²) + qN(1,σ²) against Q = N(0,σ²) (remove one example).

    The loss log(1 − q + q·exp((2x − 1)/(2σ²))) increases in x; it exceeds ε iff x > x*(ε) with
    x* = σ²·log((e^ε − 1 + q)/q) + 1/2. Below log(1 − q) every x counts and δ = 1 − e^ε."""
    deltas = np.empty_like(eps)
    low = math.log1p(-q) if q < 1.0 else -math.inf
    live = eps > low
    deltas[~live] = -np.expm1(eps[~live])
    e = eps[live]
    with np.errstate(divide="ignore"):
        # log((e^ε − (1 − q))/q), stable where e^ε is close to 1 − q
        ell = e - math.log(q) + (np.log1p(-np.exp(low - e)) if q < 1.0 else 0.0)
    x = sigma**2 * ell + 0.5
    upper = (1.0 - q) * ndtr(-x / sigma) + q * ndtr((1.0 - x) / sigma)
    deltas[live] = upper - np.exp(e + log_ndtr(-x / sigma))
    return np.clip(deltas, 0.0, 1.0)


def _add_deltas(eps: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """δ(ε) of P = N(0,σ²) against Q = (1−q)N(0,σ²) + qN(1,σ²) (add one example).

    The loss −log(1 − q + q·exp((2x − 1)/(2σ²))) decreases in x; it exceeds ε iff x < x†(ε)
    with x† = σ²·log((e^(−ε) − 1 + q)/q) + 1/2. At or above −log(1 − q) nothing does: δ = 0."""
    deltas = np.zeros_like(eps)
    high = -math.log1p(-q) if q < 1.0 else math.inf
    live = eps < high
    e = eps[live]
    with np.errstate(divide="ignore"):
        ell = -e - math.log(q) + (np.log1p(-np.exp(e - high)) if q < 1.0 else 0.0)
    x = sigma**2 * ell + 0.5
    lower_cdf = np.logaddexp(
        math.log1p(-q) + log_ndtr(x / sigma) if q < 1.0 else -np.inf,
        math.log(q) + log_ndtr((x - 1.0) / sigma),
    )
    deltas[live] = ndtr(x / sigma) - np.exp(e + lower_cdf)
    return np.clip(deltas, 0.0, 1.0)


def _loss(x: float, q: float, sigma: float) -> float:
    """The remove-direction loss at x (the add direction's is its negative)."""
    t = (2.0 * x - 1.0) / (2.0 * sigma**2)
    if q >= 1.0:
        return t
    return float(np.logaddexp(math.log1p(-q), math.log(q) + t))


def _bounds(q: float, sigma: float, remove: bool) -> tuple[float, float]:
    """Loss range of one step holding all but Φ̄(10) of the noise mass."""
    top = _loss(1.0 + _Z * sigma, q, sigma)  # largest remove loss that matters
    bottom = _loss(-_Z * sigma, q, sigma)  # smallest
    if remove:
        return bottom, top
    return -top, -bottom


@lru_cache(maxsize=4096)
def step_pld(q: float, sigma: float, interval: float, remove: bool) -> StepPLD:
    """Connect-the-dots discretisation of one Poisson-subsampled Gaussian step."""
    lo_loss, hi_loss = _bounds(q, sigma, remove)
    lo, hi = math.floor(lo_loss / interval), math.ceil(hi_loss / interval)
    if hi <= lo:
        hi = lo + 1
    eps = np.arange(lo, hi + 1, dtype=np.float64) * interval
    deltas = (_remove_deltas if remove else _add_deltas)(eps, q, sigma)
    deltas = np.minimum.accumulate(deltas)  # δ is non-increasing; removes float jitter
    diffs = np.diff(deltas)
    em1 = math.expm1(interval)
    probs = np.empty_like(deltas)
    probs[0] = 1.0 - deltas[0] + diffs[0] / em1
    probs[1:-1] = (diffs[1:] - diffs[:-1] * math.exp(interval)) / em1
    probs[-1] = diffs[-1] / math.expm1(-interval)
    probs = np.maximum(probs, 0.0)
    probs.setflags(write=False)
    return StepPLD(lo, probs, float(deltas[-1]), interval)


def _window(blocks: list[tuple[float, float, int]], interval: float) -> tuple[float, float]:
    """Loss range holding all but TAIL_MASS of the composed discrete distribution (either
    direction), by Chernoff bounds on the sum of the steps' losses.

    The moment generating function of one step's loss L under P is a Rényi divergence:
    E[e^{(α−1)L}] = e^{(α−1)·D_α(P‖Q)} and E[e^{−αL}] = e^{(α−1)·D_α(Q‖P)}, and for the
    Poisson-subsampled Gaussian both directions are bounded by the closed form at integer α
    (Mironov, Talwar, Zhang 2019), cached in :mod:`accounting.history`. The discrete loss is the
    continuous one moved to a neighbouring grid point (connect the dots keeps P and Q mass
    while splitting between the two), so each step adds at most |λ|·interval to log E[e^{λL}];
    the ~1e−23 of mass beyond the grid adds the 1e−20 per step below."""
    from .history import ORDERS, _step_curve

    steps = sum(n for _, _, n in blocks)
    curve = sum(n * _step_curve(q, s) for q, s, n in blocks)  # Σ n_b·D_α per order α
    slack = math.log(2.0 / TAIL_MASS) + 1e-20 * steps
    lam = ORDERS - 1.0
    upper = (lam * curve + lam * interval * steps + slack) / lam  # λ = α − 1 > 0
    lower = -((ORDERS - 1.0) * curve + ORDERS * interval * steps + slack) / ORDERS  # λ = −α
    return float(np.max(lower)), float(np.min(upper))


def window_bins(blocks: list[tuple[float, float, int]], interval: float) -> int:
    """Bins of the composed grid at ``interval`` (what a query will allocate, per array)."""
    low, high = _window(blocks, interval)
    return int(math.ceil(high / interval) - math.floor(low / interval)) + 1


@dataclass(frozen=True)
class ComposedPLD:
    """The composed discrete distribution in one direction."""

    losses: np.ndarray  # ascending
    probs: np.ndarray
    infinity: float


def _compose(
    blocks: list[tuple[float, float, int]],
    interval: float,
    remove: bool,
    window: tuple[float, float],
) -> ComposedPLD:
    steps = [(step_pld(q, s, interval, remove), n) for q, s, n in blocks]
    low_loss, high_loss = window  # the same for both directions: computed once per query
    base = sum(n * st.lower for st, n in steps)
    full_hi = base + sum(n * (len(st.probs) - 1) for st, n in steps)
    hi = min(full_hi, math.ceil(high_loss / interval))
    lo = max(base, math.floor(low_loss / interval))
    hi = max(hi, lo)
    width = hi - lo + 1
    size = fft.next_fast_len(max(width, max(len(st.probs) for st, _ in steps)), real=True)
    spectrum = np.ones(size // 2 + 1, dtype=np.complex128)
    for st, n in steps:
        spectrum *= fft.rfft(st.probs, size) ** n
    circular = fft.irfft(spectrum, size)
    # index j of the circular result holds the sums ≡ base + j (mod size)
    probs = np.roll(circular, -((lo - base) % size))[:width]
    probs = np.maximum(probs, 0.0)
    finite = math.fsum(n * math.log1p(-st.infinity) for st, n in steps)
    truncated = TAIL_MASS if (lo > base or hi < full_hi) else 0.0
    infinity = min(1.0, -math.expm1(finite) + truncated)
    losses = np.arange(lo, lo + width, dtype=np.float64) * interval
    return ComposedPLD(losses, probs, infinity)


def _epsilon(c: ComposedPLD, delta: float) -> float:
    """Smallest ε ≥ 0 with Σ_{l>ε} p_l (1 − e^{ε−l}) + p_∞ ≤ δ.

    On [l_{k−1}, l_k] the divergence is upper_k − e^ε·lower_k with upper_k = p_∞ + Σ_{j≥k} p_j
    and lower_k = Σ_{j≥k} p_j e^{−l_j}. On the uniform grid, T_k = e^{l_{k−1}}·lower_k =
    Σ_{j≥k} p_j e^{−(j−k+1)h} obeys T_k = e^{−h}(p_k + T_{k+1}): a first-order filter from the
    top, every term at most 1, so no exponential of a loss ever overflows."""
    if c.infinity > delta:
        return math.inf
    h = c.losses[1] - c.losses[0] if len(c.losses) > 1 else 1.0
    decay = math.exp(-h)
    upper = c.infinity + np.cumsum(c.probs[::-1])[::-1]
    scaled = lfilter([decay], [1.0, -decay], c.probs[::-1])[::-1]  # T_k
    # δ at ε = l_{k−1} is upper_k − T_k, for k = 1..n; δ at l_{n−1} and above is p_∞
    d_at = np.append(upper[1:] - scaled[1:], c.infinity)
    above = np.nonzero(d_at > delta)[0]
    # the answer lies in [l_{k−1}, l_k] (below l_0 when k = 0)
    k = int(above[-1]) + 1 if len(above) else 0
    ref = c.losses[k] - h  # l_{k−1}
    eps = ref + math.log((upper[k] - delta) / scaled[k])
    return max(eps, 0.0)


def _delta(c: ComposedPLD, epsilon: float) -> float:
    live = c.losses > epsilon
    return float(c.infinity + np.dot(c.probs[live], -np.expm1(epsilon - c.losses[live])))


def compose_epsilon(blocks: list[tuple[float, float, int]], delta: float, interval: float) -> float:
    """Upper bound on ε at δ for the composition of (q, σ, steps) blocks (σ > 0)."""
    window = _window(blocks, interval)
    return max(
        _epsilon(_compose(blocks, interval, remove, window), delta) for remove in (True, False)
    )


def compose_delta(blocks: list[tuple[float, float, int]], epsilon: float, interval: float) -> float:
    """Upper bound on δ at ε for the composition of (q, σ, steps) blocks (σ > 0)."""
    window = _window(blocks, interval)
    return max(
        _delta(_compose(blocks, interval, remove, window), epsilon) for remove in (True, False)
    )
