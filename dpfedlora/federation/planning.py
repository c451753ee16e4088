"""Privacy planning: σ given, or calibrated once over the planned rounds (and a private init).

ε grows with q and with the number of steps, so only the Pareto-maximal (q, steps) pairs among
the clients can bind; σ is the largest of their calibrated values, so every client's planned
spending over all planned rounds stays within ``privacy.target_epsilon``.

Calibrated to attack risk instead (``privacy.target_tpr`` at ``privacy.target_fpr``;
:mod:`accounting.risk`), σ is the largest that any frontier client needs to keep every
membership-inference attack's TPR at that FPR within the target (risk, like ε, grows with q and
steps), and the budget the ledger enforces is the ε at δ that this σ gives over the binding
client's planned run: the same releases, stated as ε (:func:`plan_budget`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

from accounting import Composed, Event, SelfComposed, dpsgd_event, noise_multiplier_for
from accounting.events import flatten
from accounting.history import best_bound, history_of
from accounting.risk import noise_multiplier_for_risk_event

from ..config import PrivacyConfig

__all__ = [
    "plan_noise", "plan_budget", "planned_run_event", "resolve_risk_budget", "calibration_note",
]  # fmt: skip


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
    frontier = _frontier(rates_and_steps)
    if privacy.target_tpr is not None:
        return max(_risk_sigma(privacy, rounds, q, steps, init) for q, steps in frontier)
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


def _frontier(rates_and_steps: Iterable[tuple[float, int]]) -> list[tuple[float, int]]:
    """The (q, steps) pairs no other pair dominates in both (only they can bind)."""
    pairs = set(rates_and_steps)
    return sorted(
        a for a in pairs if not any(b != a and b[0] >= a[0] and b[1] >= a[1] for b in pairs)
    )


@lru_cache(maxsize=64)
def _risk_sigma(
    privacy: PrivacyConfig, rounds: int, q: float, steps: int, init: Event | None
) -> float:
    """σ calibrated to the risk target for one client's planned run (memoised: the set-up and
    the run's start both ask)."""
    return noise_multiplier_for_risk_event(
        target_tpr=privacy.target_tpr,
        at_fpr=privacy.target_fpr,
        make_event=lambda s: planned_run_event(
            s, sampling_rate=q, steps=steps, rounds=rounds, init=init
        ),
        backend=privacy.accountant,
    )


def plan_budget(
    privacy: PrivacyConfig, *, rounds: int, rates_and_steps: Iterable[tuple[float, int]],
    init: Event | None,
) -> float:  # fmt: skip
    """The ε budget each client may spend: ``privacy.target_epsilon`` (∞ when only σ is given),
    or for a risk target the largest ε at δ that the risk-calibrated σ gives over a client's
    planned run. Computed as the ledger computes a client's ε (the smaller of the backend's and
    RDP's bounds on the merged history), so every planned release passes its budget check."""
    if privacy.target_tpr is None or not privacy.private:
        return math.inf if privacy.target_epsilon is None else float(privacy.target_epsilon)
    frontier = _frontier(rates_and_steps)
    sigma = max(_risk_sigma(privacy, rounds, q, steps, init) for q, steps in frontier)
    return max(
        best_bound(
            history_of(flatten(planned_run_event(
                sigma, sampling_rate=q, steps=steps, rounds=rounds, init=init
            ))),
            privacy.delta,
            privacy.accountant,
        ).epsilon
        for q, steps in frontier
    )  # fmt: skip


def resolve_risk_budget(
    privacy: PrivacyConfig, *, rounds: int, rates_and_steps: Iterable[tuple[float, int]],
    init: Event | None,
) -> None:  # fmt: skip
    """Record on ``privacy`` the ε budget its risk target stands for (no-op for an ε target):
    what :attr:`PrivacyConfig.budget` answers from then on."""
    if privacy.target_tpr is not None and privacy.private:
        pairs = list(rates_and_steps)
        privacy.resolve_budget(
            plan_budget(privacy, rounds=rounds, rates_and_steps=pairs, init=init)
        )


def calibration_note(privacy: PrivacyConfig, *, rounds: int) -> str:
    """How σ was chosen, for the line that announces a private run."""
    if privacy.noise_multiplier is not None:
        return "given"
    if privacy.target_tpr is not None:
        return (
            f"calibrated to TPR ≤ {privacy.target_tpr:g} at FPR {privacy.target_fpr:g} for any "
            f"membership-inference attack over {rounds} rounds; ε budget {privacy.budget:.4g}"
        )
    return f"calibrated to ε = {privacy.target_epsilon:g} over {rounds} rounds"
