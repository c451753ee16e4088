"""Shared by the dp-accounting backends (pld, rdp): our blocks as dp-accounting events."""

from __future__ import annotations

import dp_accounting

from ..events import Component


def compose_into(accountant, components: list[Component]):
    """Compose each (q, σ, count) block as a Poisson-sampled Gaussian, ``count`` times."""
    for c in components:
        event = dp_accounting.PoissonSampledDpEvent(
            c.sampling_rate, dp_accounting.GaussianDpEvent(c.noise_multiplier)
        )
        accountant.compose(event, c.count)
    return accountant
