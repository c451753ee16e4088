"""Noise calibration: the smallest noise multiplier whose ε stays within a target.

Bisection on σ with a **fresh accountant per probe** (dp-accounting's mechanism_calibration
design): probes never share or mutate state, so a probe cannot leak into the next one.

Guarantee: the returned σ satisfies ``epsilon(σ) <= target_epsilon`` as evaluated by the same
backend (checked explicitly before returning), and ``epsilon(σ) >= target - tolerance`` where
tolerance = max(rtol * target, atol), i.e. within 1 % of the target or 0.01 absolute.

Each probe's ε is the accountant's answer, so for a tight backend the smaller of its bound and
the RDP bound (:meth:`Accountant.epsilon`); ``Calibration.accountant`` names the one that
answered at the returned σ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .accountant import check_target_delta
from .backends import DEFAULT_BACKEND, make_accountant
from .events import Event, dpsgd_event

__all__ = ["Calibration", "CalibrationError", "noise_multiplier_for", "calibrate_dpsgd"]

# Beyond this σ the target is unreachable in practice (ε scales like 1/σ); beyond the lower one,
# ε is essentially unbounded.
_MAX_SIGMA = 1e4
_MIN_SIGMA = 1e-2


class CalibrationError(ValueError):
    """No noise multiplier meets the target."""


@dataclass(frozen=True)
class Calibration:
    noise_multiplier: float
    epsilon: float
    target_epsilon: float
    delta: float
    accountant: str
    probes: int


# The bracket's first guess comes from our integer-order RDP closed form (accounting.history):
# microseconds per probe where dp-accounting's RDP (fractional orders) takes ~0.2 s, and, being
# a min over fewer orders, never below dp-accounting's RDP, so never below PLD's or PRV's ε.
_CLOSED_FORM_RDP = "rdp-closed-form"


def _closed_form_rdp(event: Event, delta: float) -> float:
    from .events import flatten
    from .history import history_of, rdp_epsilon

    return rdp_epsilon(history_of(flatten(event)), delta)


def noise_multiplier_for(
    *,
    target_epsilon: float,
    delta: float,
    make_event: Callable[[float], Event],
    accountant: str = DEFAULT_BACKEND,
    rtol: float = 0.01,
    atol: float = 0.01,
    initial_guess: bool = True,
) -> Calibration:
    """Smallest σ (to tolerance) with ``epsilon(make_event(σ)) <= target_epsilon`` at ``delta``.

    Args:
        target_epsilon: the ε budget, > 0 and finite.
        delta: target δ in (0, 0.1) (larger guarantees nothing; below 1/n in practice).
        make_event: σ -> the whole planned release (e.g. all DP-SGD steps of all rounds).
        accountant: backend name ("fastpld", "prv", "pld", "rdp").
        rtol, atol: stop once ε(σ) >= target - max(rtol * target, atol).
        initial_guess: bracket from a (cheap) RDP calibration first; valid because RDP's ε is
            never below PLD's or PRV's.

    Raises:
        CalibrationError: the target cannot be met with σ <= 1e4.
    """
    if not (isinstance(target_epsilon, (int, float)) and 0 < target_epsilon < math.inf):
        raise ValueError(
            f"`target_epsilon` must be a positive finite number. Found {target_epsilon!r}."
        )
    check_target_delta(delta)
    probes = 0
    answered: dict[float, str] = {}  # σ -> the bound that answered (RDP when it was smaller)

    def eps(sigma: float) -> float:
        nonlocal probes
        probes += 1
        if accountant == _CLOSED_FORM_RDP:
            return _closed_form_rdp(make_event(sigma), delta)
        acc = make_accountant(accountant).compose(make_event(sigma))
        value = acc.epsilon(delta)
        answered[sigma] = acc.answered_by
        return value

    tol = max(rtol * target_epsilon, atol)
    # 1) Bracket: lo violates the target, hi meets it. Start from the RDP answer when the backend
    #    is tighter than RDP: RDP's ε is an upper bound on PLD's and PRV's, so σ_rdp meets the
    #    target for them too and we only search below it (RDP probes cost milliseconds).
    start = 1.0
    if accountant not in ("rdp", _CLOSED_FORM_RDP) and initial_guess:
        start = noise_multiplier_for(
            target_epsilon=target_epsilon,
            delta=delta,
            make_event=make_event,
            accountant=_CLOSED_FORM_RDP,
            rtol=rtol,
            atol=atol,
        ).noise_multiplier
    lo, e_lo, hi, e_hi = _bracket(eps, start, target_epsilon, delta)
    if lo >= _MIN_SIGMA:
        hi, e_hi = _shrink(eps, (lo, e_lo, hi, e_hi), target_epsilon, tol)
    if e_hi > target_epsilon:  # pragma: no cover - invariant of the loops
        raise CalibrationError("internal error: calibration overshot the target.")
    return Calibration(hi, e_hi, target_epsilon, delta, answered.get(hi, accountant), probes)


def _bracket(eps: Callable[[float], float], start: float, target: float,
             delta: float) -> tuple[float, float, float, float]:  # fmt: skip
    """(lo, ε(lo), hi, ε(hi)) with ε(lo) > target ≥ ε(hi); lo below the smallest σ (and ε(lo)
    not evaluated) when even that meets the target."""
    hi, e_hi = start, eps(start)
    if e_hi <= target:
        lo = hi
        while True:
            lo /= 1.25 if start != 1.0 else 2.0
            if lo < _MIN_SIGMA:
                return lo, math.inf, hi, e_hi
            e_lo = eps(lo)
            if e_lo > target:
                return lo, e_lo, hi, e_hi
            hi, e_hi = lo, e_lo
    lo, e_lo = hi, e_hi
    while e_hi > target:
        lo, e_lo = hi, e_hi
        hi *= 2
        if hi > _MAX_SIGMA:
            raise CalibrationError(
                f"no noise multiplier up to {_MAX_SIGMA:g} reaches target_epsilon="
                f"{target} at delta={delta}. Raise the target, lower the sampling "
                "rate, or plan fewer steps."
            )
        e_hi = eps(hi)
    return lo, e_lo, hi, e_hi


def _shrink(eps: Callable[[float], float], bracket: tuple[float, float, float, float],
            target: float, tol: float) -> tuple[float, float]:  # fmt: skip
    """Shrink the bracket: interpolate log σ against log ε (ε is close to a power law in σ),
    aiming just inside the tolerance band, and fall back to bisection when interpolation would
    not shrink the bracket enough. Stop once hi is within tolerance of the target."""
    lo, e_lo, hi, e_hi = bracket
    aim = target - tol / 2
    while target - e_hi > tol and hi / lo > 1 + 1e-9:
        mid = math.sqrt(lo * hi)
        if math.isfinite(e_lo) and e_lo > 0 and e_hi > 0 and e_lo != e_hi:
            frac = (math.log(aim) - math.log(e_lo)) / (math.log(e_hi) - math.log(e_lo))
            if 0.05 < frac < 0.95:
                mid = math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo)))
        e_mid = eps(mid)
        if e_mid <= target:
            hi, e_hi = mid, e_mid
        else:
            lo, e_lo = mid, e_mid
    return hi, e_hi


def calibrate_dpsgd(
    *,
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    accountant: str = DEFAULT_BACKEND,
) -> Calibration:
    """σ for ``steps`` Poisson-sampled DP-SGD steps at rate ``sampling_rate``."""
    # Validate once up front so a bad q or step count is reported as such, not as a probe error.
    dpsgd_event(noise_multiplier=1.0, sampling_rate=sampling_rate, steps=steps)
    return noise_multiplier_for(
        target_epsilon=target_epsilon,
        delta=delta,
        make_event=lambda s: dpsgd_event(
            noise_multiplier=s, sampling_rate=sampling_rate, steps=steps
        ),
        accountant=accountant,
    )
