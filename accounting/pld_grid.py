"""Privacy-loss distributions on a grid, in numpy: one step of the fast tight accountant.

One Poisson-subsampled Gaussian step compares P = (1−q)·N(0,σ²) + q·N(1,σ²) with Q = N(0,σ²):
"remove" is the pair (P, Q), "add" the pair (Q, P). The privacy loss of an output x is
L(x) = log(1 − q + q·e^{t(x)}) with t(x) = (2x − 1)/(2σ²) (remove) and −L(x) (add); it is
monotone in x, so each loss interval [i·h, (i+1)·h] is one interval of x, the same for both
directions.

**Connect the dots, from interval masses** (Doroshenko, Ghazi, Kamath, Kumar, Manurangsi 2022,
"Connect the Dots: Tighter Discrete Approximations of Privacy Loss Distributions", fixed-gap
form). The P-mass m_P and Q-mass m_Q of the outputs whose loss lies in [a, a + h] are moved to
the two grid points a and a + h so that both are kept: the upper point gets
b = (m_P − e^a·m_Q)/(1 − e^{−h}) of P-mass, the lower one m_P − b. The discrete pair then
dominates the mechanism (its δ(ε) is the chord of the true, convex δ(e^ε) between grid points).
The masses are differences of Gaussian tail probabilities, each taken on the tail that is
small, so every bin is accurate relative to its own mass, and b is computed as
q·(H − e^{t_a}·G) (remove) or e^{−a−h}·(c·G − q·H) with c = e^{a+h} − 1 + q (add), G and H
being the N(0,σ²) and N(1,σ²) masses of the x-interval. No bin is a second difference of a
quantity near 1 and no negative mass is clipped into existence: the P-mass of every step sums
to exactly what the Gaussians hold. b is then raised by a bound on its own rounding error
(moving P-mass up only makes the pair more pessimistic).

Outputs beyond 10 σ from both Gaussian centres (mass ≤ Φ̄(10) ≈ 7.6e-24) go pessimistically to
+∞ (counted in δ) or to the lowest grid point. Composition (:mod:`accounting.backends._pld_fft`)
and the conversion to (ε, δ) (:mod:`accounting.backends._pld_query`) live with the backend;
:func:`compose_epsilon` and :func:`compose_delta` are the entry points at a given interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from scipy.special import log_ndtr, ndtr

__all__ = [
    "StepPLD",
    "step_pld",
    "step_bins",
    "step_spread",
    "compose_epsilon",
    "compose_delta",
]

# Grid reach in noise standard deviations past both Gaussian centres (see the module docstring).
_Z = 10.0
# Unit round-off of float64.
_U = 2.0**-53


@dataclass(frozen=True)
class StepPLD:
    """One step's discrete privacy-loss distribution in one direction: P-probabilities of the
    losses (lower + i)·interval, and the P-mass at +∞."""

    lower: int
    probs: np.ndarray
    infinity: float
    interval: float

    @cached_property
    def log_probs(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.probs)

    @cached_property
    def index(self) -> np.ndarray:
        """0, 1, ..., len − 1 as floats (bin offsets from ``lower``)."""
        return np.arange(len(self.probs), dtype=np.float64)

    @property
    def upper(self) -> int:
        return self.lower + len(self.probs) - 1

    def capped(self, mass: float) -> StepPLD:
        """This step with its highest losses, at most ``mass`` of P-mass in all, moved to +∞
        (pessimistic: a larger loss; the mass is counted in δ exactly). Bounding the loss this
        way keeps the moment generating function, and so a tilt, free of the far tail."""
        tail = np.cumsum(self.probs[::-1])  # tail[j]: mass of the top j + 1 bins
        drop = int(np.searchsorted(tail, mass, side="right"))
        if drop == 0:
            return self
        keep = max(len(self.probs) - drop, 1)
        out = StepPLD(self.lower, self.probs[:keep], self.infinity + float(tail[-keep - 1]),
                      self.interval)  # fmt: skip
        out.__dict__["log_probs"] = self.log_probs[:keep]
        out.__dict__["index"] = self.index[:keep]
        return out


def _loss(x: float, q: float, sigma: float) -> float:
    """The remove-direction loss at x (the add direction's is its negative)."""
    t = (2.0 * x - 1.0) / (2.0 * sigma**2)
    if q >= 1.0:
        return t
    return float(np.logaddexp(math.log1p(-q), math.log(q) + t))


def _x_of(losses: np.ndarray, q: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """x with L(x) = loss, and c = e^loss − (1 − q) = q·e^{t(x)} (x = −∞ where c ≤ 0)."""
    c = np.expm1(losses) + q
    if q >= 1.0:
        return sigma**2 * losses + 0.5, c
    with np.errstate(divide="ignore", invalid="ignore"):
        x = sigma**2 * (np.log(c) - math.log(q)) + 0.5
    return np.where(c > 0.0, x, -np.inf), c


def _gauss(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """N(0,1) mass between consecutive points of the increasing array v, and the size of the
    tail values each subtracts (its rounding error is a few units of round-off of that size).
    Only the small tail Φ(−|v|) is ever evaluated, once per point: right of 0 the upper tails
    are subtracted, left of it the lower ones, never 1 − (something close to 1)."""
    t = ndtr(-np.abs(v))
    a, b, ta, tb = v[:-1], v[1:], t[:-1], t[1:]
    mass = np.where(a >= 0.0, ta - tb, np.where(b <= 0.0, tb - ta, 1.0 - ta - tb))
    scale = np.where(a >= 0.0, ta, np.where(b <= 0.0, tb, 1.0))
    return np.maximum(mass, 0.0), scale


def _split(gap: np.ndarray, err: np.ndarray, total: np.ndarray, h: float) -> np.ndarray:
    """The upper grid point's share b = gap/(1 − e^{−h}), raised by its rounding bound and kept
    in [0, total] (the interval's P-mass), so the pair stays pessimistic."""
    scale = -1.0 / math.expm1(-h)
    return np.clip((gap + err) * scale, 0.0, total)


# A step on a fine grid holds up to a few hundred thousand bins (a few MB with its logs): the
# cache is sized for a long history's distinct blocks, not for a whole sweep.
@lru_cache(maxsize=128)
def _steps(q: float, sigma: float, h: float) -> tuple[StepPLD, StepPLD]:
    """Connect-the-dots discretisation of one Poisson-subsampled Gaussian step, (remove, add)."""
    lo = math.floor(_loss(-_Z * sigma, q, sigma) / h)
    hi = max(math.ceil(_loss(1.0 + _Z * sigma, q, sigma) / h), lo + 1)
    losses = np.arange(lo, hi + 1, dtype=np.float64) * h
    x, c = _x_of(losses, q, sigma)
    g, g_scale = _gauss(x / sigma)  # N(0,σ²) mass per interval
    hm, h_scale = _gauss((x - 1.0) / sigma)  # N(1,σ²)
    p = (1.0 - q) * g + q * hm if q < 1.0 else hm
    # below x[0] (empty unless q = 1) and above x[-1]: N(0,σ²) and N(1,σ²) tail masses
    g_low, h_low = ndtr(x[0] / sigma), ndtr((x[0] - 1.0) / sigma)
    g_top, h_top = ndtr(-x[-1] / sigma), ndtr(-(x[-1] - 1.0) / sigma)
    err = 16.0 * _U
    # remove: P = mixture, Q = N(0); the gap m_P − e^a·m_Q = q·H − c_a·G
    gap = q * hm - c[:-1] * g
    up = _split(gap, err * (q * (hm + h_scale) + np.abs(c[:-1]) * (g + g_scale)), p, h)
    remove = np.zeros(len(losses))
    remove[1:] += up
    remove[:-1] += p - up
    remove[0] += (1.0 - q) * g_low + q * h_low
    rem_inf = (1.0 - q) * g_top + q * h_top
    # add: P = N(0), Q = mixture, losses −l; interval j spans [−l_{j+1}, −l_j] and the gap
    # m_P − e^{−l_{j+1}}·m_Q = e^{−l_{j+1}}·(c_{j+1}·G − q·H)
    decay = np.exp(-losses[1:])
    gap = decay * (c[1:] * g - q * hm)
    up = _split(gap, err * decay * (q * (hm + h_scale) + c[1:] * (g + g_scale)), g, h)
    add = np.zeros(len(losses))  # indexed like `losses`: add[k] is the P-mass at −l_k
    add[:-1] += up
    add[1:] += g - up
    add[-1] += g_top  # losses below the grid: rounded up to its lowest point
    add_inf = float(g_low)  # x below the grid: add-direction losses above it
    return (
        _freeze(StepPLD(lo, remove, float(rem_inf), h)),
        _freeze(StepPLD(-hi, add[::-1].copy(), add_inf, h)),
    )


def _freeze(step: StepPLD) -> StepPLD:
    step.probs.setflags(write=False)
    return step


def step_pld(q: float, sigma: float, interval: float, remove: bool) -> StepPLD:
    """Connect-the-dots discretisation of one Poisson-subsampled Gaussian step."""
    return _steps(float(q), float(sigma), float(interval))[0 if remove else 1]


step_pld.cache_clear = _steps.cache_clear  # type: ignore[attr-defined]


def step_bins(q: float, sigma: float, interval: float) -> int:
    """Bins of one step's grid at ``interval`` (before its far tail is capped)."""
    return int((_loss(1.0 + _Z * sigma, q, sigma) - _loss(-_Z * sigma, q, sigma)) / interval) + 2


def step_spread(q: float, sigma: float) -> float:
    """A closed-form scale of one step's loss: its standard deviation for small q,
    √(q²·(e^{1/σ²} − 1)) (the χ² divergence of P from Q), and 1/σ for the Gaussian (q = 1)."""
    return min(q * math.sqrt(math.expm1(min(1.0 / sigma**2, 700.0))), 1.0 / sigma)


# Reference closed forms of one step's hockey-stick divergence δ(ε) (tests compare the grid and
# the numerical integral with them; the grid itself is built from interval masses above).
def _remove_deltas(eps: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """δ(ε) of P = (1−q)N(0,σ²) + qN(1,σ²) against Q = N(0,σ²) (remove one example).

    The loss exceeds ε iff x > x*(ε) = σ²·log((e^ε − 1 + q)/q) + 1/2; below log(1 − q) every x
    counts and δ = 1 − e^ε."""
    eps = np.asarray(eps, dtype=np.float64)
    x, c = _x_of(eps, q, sigma)
    live = c > 0.0
    out = -np.expm1(eps)
    xl = x[live]
    upper = (1.0 - q) * ndtr(-xl / sigma) + q * ndtr((1.0 - xl) / sigma)
    out[live] = upper - np.exp(eps[live] + log_ndtr(-xl / sigma))
    return np.clip(out, 0.0, 1.0)


def _add_deltas(eps: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """δ(ε) of Q = N(0,σ²) against P (add one example).

    For ε ≥ 0 directly: the loss −L(x) exceeds ε iff x < x†(ε) = σ²·log((e^{−ε} − 1 + q)/q) + ½,
    so δ = Φ(x†/σ) − e^ε·P(x < x†). For ε < 0, where that is a difference of two numbers near 1,
    through the identity δ_add(ε) = 1 − e^ε + e^ε·δ_remove(−ε) (Q(S) − e^ε·P(S) rewritten on
    the complement of S), with 1 − e^ε taken as −expm1(ε)."""
    eps = np.asarray(eps, dtype=np.float64)
    out = np.zeros_like(eps)
    neg = eps < 0.0
    out[neg] = -np.expm1(eps[neg]) + np.exp(eps[neg]) * _remove_deltas(-eps[neg], q, sigma)
    e = eps[~neg]
    x, c = _x_of(-e, q, sigma)
    live = c > 0.0
    xl, el = x[live], e[live]
    lower = np.logaddexp(
        math.log1p(-q) + log_ndtr(xl / sigma) if q < 1.0 else -np.inf,
        math.log(q) + log_ndtr((xl - 1.0) / sigma),
    )
    pos = np.zeros_like(e)
    pos[live] = ndtr(xl / sigma) - np.exp(el + lower)
    out[~neg] = pos
    return np.clip(out, 0.0, 1.0)


def compose_epsilon(blocks: list[tuple[float, float, int]], delta: float, interval: float) -> float:
    """Upper bound on ε at δ for the composition of (q, σ, steps) blocks (σ > 0), both
    neighbouring directions, on the grid ``interval``."""
    from .backends._pld_query import epsilon_bound

    return epsilon_bound(blocks, delta, interval)


def compose_delta(blocks: list[tuple[float, float, int]], epsilon: float, interval: float) -> float:
    """Upper bound on δ at ε for the composition of (q, σ, steps) blocks (σ > 0), both
    neighbouring directions, on the grid ``interval``."""
    from .backends._pld_query import delta_bound

    return delta_bound(blocks, epsilon, interval)
