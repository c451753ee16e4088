"""Closed-form RDP of the Poisson-subsampled Gaussian at integer orders, and ε conversions.

This is an independent implementation (numpy/scipy only) used to cross-check the dp-accounting
backend and to reproduce published numbers that were computed with the pre-2020 "classic"
RDP-to-(ε, δ) conversion (Abadi et al. 2016, TF-Privacy tutorials, early Opacus).

Maths (Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
Mechanism", Sec. 3.3): for integer order α >= 2, sampling rate q and noise multiplier σ,

    A_α = Σ_{k=0..α} C(α, k) (1 - q)^(α - k) q^k exp((k² - k) / (2 σ²))
    RDP(α) = log(A_α) / (α - 1)

and RDP composes additively over steps. Conversions at target δ:

    classic (Mironov 2017, Prop. 3):   ε = min_α RDP(α) + log(1/δ) / (α - 1)
    modern  (Balle et al. 2020, Thm 21): ε = min_α RDP(α) + log((α-1)/α) - (log δ + log α)/(α - 1)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.special import gammaln, logsumexp

__all__ = [
    "INTEGER_ORDERS",
    "rdp_subsampled_gaussian",
    "classic_epsilon",
    "modern_epsilon",
]

# Integer orders only: the binomial expansion is exact there.
INTEGER_ORDERS: tuple[int, ...] = tuple(range(2, 64)) + (128, 256, 512)


def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
    if q == 1.0:
        return alpha * (alpha - 1) / (2 * sigma**2)
    k = np.arange(alpha + 1, dtype=float)
    log_binom = gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)
    terms = (
        log_binom + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2)
    )
    return float(logsumexp(terms))


def rdp_subsampled_gaussian(
    *, sampling_rate: float, noise_multiplier: float, steps: int, orders: Iterable[int]
) -> np.ndarray:
    """RDP at each integer order of ``steps`` compositions of the subsampled Gaussian.

    >>> round(float(rdp_subsampled_gaussian(sampling_rate=1.0, noise_multiplier=1.0,
    ...       steps=1, orders=[2])[0]), 6)   # Gaussian: α / (2σ²)
    1.0
    """
    out = []
    for alpha in orders:
        if int(alpha) != alpha or alpha < 2:
            raise ValueError(f"`orders` must be integers >= 2. Found {alpha!r}.")
        out.append(
            steps * _log_a_integer(sampling_rate, noise_multiplier, int(alpha)) / (alpha - 1)
        )
    return np.asarray(out)


def classic_epsilon(
    rdp: Sequence[float], orders: Sequence[float], delta: float
) -> tuple[float, float]:
    """Pre-2020 conversion ε = min_α RDP(α) + log(1/δ)/(α-1). Returns (ε, optimal α)."""
    rdp_arr = np.asarray(rdp, dtype=float)
    orders_arr = np.asarray(orders, dtype=float)
    eps = rdp_arr + math.log(1 / delta) / (orders_arr - 1)
    i = int(np.nanargmin(eps))
    return float(max(eps[i], 0.0)), float(orders_arr[i])


def modern_epsilon(
    rdp: Sequence[float], orders: Sequence[float], delta: float
) -> tuple[float, float]:
    """Balle et al. 2020 (Thm 21) conversion, as used by Opacus >= 1.0 and dp-accounting."""
    rdp_arr = np.asarray(rdp, dtype=float)
    a = np.asarray(orders, dtype=float)
    eps = rdp_arr + np.log1p(-1 / a) - (math.log(delta) + np.log(a)) / (a - 1)
    i = int(np.nanargmin(eps))
    return float(max(eps[i], 0.0)), float(a[i])
