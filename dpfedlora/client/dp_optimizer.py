"""Opacus DP optimizers whose Gaussian noise comes from a :class:`~dpfedlora.noise.NoiseSource`.

Opacus draws noise from a ``torch.Generator`` (Mersenne Twister); a generator cannot be a CSPRNG,
so :class:`SourcedNoise` replaces ``add_noise`` with the same computation (clipped sum plus
N(0, σ²C²) per parameter, once per real step) drawn from our source. Everything else —
clipping, accumulation over physical chunks, the division by the expected batch size — stays
Opacus's. Audit variants subclass these (:mod:`dpfedlora.audit.optim`).
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from ..noise import NoiseSource

__all__ = ["SourcedNoise", "SourcedDPOptimizer", "SourcedGhostDPOptimizer"]


class SourcedNoise:
    """Mixin for an Opacus DPOptimizer: noise from ``noise_source`` instead of a generator."""

    noise_source: NoiseSource

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise_source: NoiseSource, **kw):
        super().__init__(optimizer, **kw)  # type: ignore[call-arg]
        self.noise_source = noise_source

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm  # type: ignore[attr-defined]
        for p in self.params:  # type: ignore[attr-defined]
            _check_processed_flag(p.summed_grad)
            noise = self.noise_source.normal(p.summed_grad.shape, std=std, like=p.summed_grad)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


class SourcedDPOptimizer(SourcedNoise, DPOptimizer):
    """Hooks mode: per-sample gradients, clipped and summed by Opacus."""


class SourcedGhostDPOptimizer(SourcedNoise, DPOptimizerFastGradientClipping):
    """Ghost clipping: the clipped sum arrives in ``p.grad`` from Opacus's second backward."""
