"""Privacy planning: σ given, or calibrated once over the planned rounds (and a private init).

ε grows with q and with the number of steps, so only the Pareto-maximal (q, steps) pairs among
the clients can bind; σ is the largest of their calibrated values, so every client's planned
spending over all planned rounds stays within ``privacy.target_epsilon``.
"""

from __future__ import annotations

from collections.abc import Iterable

from accounting import Composed, Event, SelfComposed, dpsgd_event, noise_multiplier_for

from ..config import PrivacyConfig

__all__ = ["plan_noise", "planned_run_event"]


def planned_run_event(
    sigma: float, *, sampling_rate: float, steps: int, rounds: int, init: Event | None
) -> Event:
    """One client's whole planned run: ``rounds`` rounds of ``steps`` DP-SGD steps at rate q,
    after the method's initialisation release (if any)."""
    one_round = dpsgd_event(noise_multiplier=sigma, sampling_rate=sampling_rate, steps=steps)
    train = SelfComposed(one_round, rounds)
    return Composed((init, train)) if init is not None else train


def plan_noise(
    privacy: PrivacyConfig, *, rounds: int, rates_and_steps: Iterable[tuple[float, int]],
    init: Event | None,
) -> float:  # fmt: skip
    """σ for the run (0 when non-private)."""
    if not privacy.private:
        return 0.0
    if privacy.noise_multiplier is not None:
        return float(privacy.noise_multiplier)
    pairs = set(rates_and_steps)
    frontier = [
        a for a in pairs if not any(b != a and b[0] >= a[0] and b[1] >= a[1] for b in pairs)
    ]
    sigmas = []
    for q, steps in frontier:
        cal = noise_multiplier_for(
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            make_event=lambda s, q=q, steps=steps: planned_run_event(
                s, sampling_rate=q, steps=steps, rounds=rounds, init=init
            ),
            accountant=privacy.accountant,
        )
        sigmas.append(cal.noise_multiplier)
    return max(sigmas)
