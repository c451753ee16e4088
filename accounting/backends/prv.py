"""PRV backend: privacy random variables with Microsoft's prv-accountant.

Gopi, Lee, Wutschitz 2021, "Numerical Composition of Differential Privacy". prv-accountant
returns (lower, estimate, upper); we report the **upper** bound, because users need a guarantee,
not an estimate.

prv-accountant 0.2.0 cannot discretise some large-ε regimes and raises ("Discrete mean differs
from continuous mean significantly", microsoft/prv_accountant#36). We then fall back to the PLD
backend (also an upper bound) with a warning that says so, instead of crashing or returning a
smaller number.
"""

from __future__ import annotations

import warnings

from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant

from ..accountant import Accountant
from ..events import Component
from ..history import prv_domain_size

__all__ = ["PRVBackend", "PRVFallbackWarning"]


class PRVFallbackWarning(UserWarning):
    """prv-accountant failed on this setting; the PLD backend answered instead."""


class PRVBackend(Accountant):
    name = "prv"

    def __init__(self, *, eps_error: float = 0.01, rel_error: float = 0.01) -> None:
        super().__init__()
        # prv-accountant's eps_error is absolute: 0.01 is 0.5 % at ε = 2 but 7 % at ε = 0.15.
        # When the first answer is loose relative to ε, we recompute at rel_error * ε.
        self.eps_error = eps_error
        self.rel_error = rel_error
        self.fell_back = False

    def _build(
        self, components: list[Component], delta_error: float, eps_error: float | None = None
    ) -> PRVAccountant:
        prvs = [
            PoissonSubsampledGaussianMechanism(
                sampling_probability=c.sampling_rate, noise_multiplier=c.noise_multiplier
            )
            for c in components
        ]
        eps_error = self.eps_error if eps_error is None else eps_error
        # The safe domain from our cached RDP curves (never smaller than prv-accountant's own,
        # which spends most of a build evaluating fractional-order RDP).
        domain = prv_domain_size(
            [(c.sampling_rate, c.noise_multiplier, c.count) for c in components],
            eps_error=eps_error,
            delta_error=delta_error,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Assuming that true epsilon")
            return PRVAccountant(
                prvs=prvs,
                max_self_compositions=[c.count for c in components],
                eps_error=eps_error,
                delta_error=delta_error,
                eps_max=domain,
            )

    def _fallback(self, exc: Exception) -> Accountant:
        from .pld import PLDBackend

        self.fell_back = True
        self._answered = "pld"
        warnings.warn(
            f"prv-accountant could not account for this setting ({exc}); "
            "using the PLD backend (also an upper bound) instead.",
            PRVFallbackWarning,
            stacklevel=3,
        )
        return PLDBackend()

    def _epsilon(self, components: list[Component], delta: float) -> float:
        try:
            # δ error δ/1000 keeps the discretisation error negligible next to δ (dp_stack.md §5).
            counts = [c.count for c in components]
            eps_error = self.eps_error
            while True:
                acc = self._build(components, delta_error=delta / 1000, eps_error=eps_error)
                _, estimate, upper = acc.compute_epsilon(delta, counts)
                wanted = max(self.rel_error * estimate, 1e-3)
                if upper - estimate <= wanted or eps_error <= wanted:
                    return upper
                eps_error = wanted
        except Exception as exc:  # noqa: BLE001 - any PRV failure must fall back, never crash
            return self._fallback(exc)._epsilon(components, delta)

    def _delta(self, components: list[Component], epsilon: float) -> float:
        try:
            acc = self._build(components, delta_error=1e-12)
            _, _, upper = acc.compute_delta(epsilon, [c.count for c in components])
            return upper
        except Exception as exc:  # noqa: BLE001
            return self._fallback(exc)._delta(components, epsilon)
