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

__all__ = ["SourcedNoise", "SourcedDPOptimizer", "FusedDPOptimizer", "SourcedGhostDPOptimizer"]


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


class FusedDPOptimizer(SourcedDPOptimizer):
    """Hooks mode, the default: Opacus's DP step in one pass over the parameters.

    The same arithmetic as Opacus's ``clip_and_accumulate``, ``add_noise`` and ``scale_grad``
    (per-sample norms over all tensors jointly, factor C / (norm + 1e-6) capped at 1, clipped sum
    accumulated over skipped physical chunks, N(0, σ²C²) per tensor from the noise source, then
    division by the expected batch size), without their per-call bookkeeping, which cost more
    than the maths on small adapters. Audits keep the unfused class (they instrument its
    methods); a test checks both give the same update from the same per-sample gradients."""

    def pre_step(self, closure=None) -> bool:
        samples = [p.grad_sample for p in self.params]
        if not samples or not all(isinstance(g, torch.Tensor) for g in samples):
            return super().pre_step(closure)  # accumulated lists: Opacus's general path
        n = samples[0].shape[0]
        dtype = self.params[0].dtype
        if any(p.dtype != dtype for p in self.params):
            return super().pre_step(closure)
        # every per-sample gradient as one (n, D) matrix: one norm and one matrix-vector product
        flat = torch.cat([g.reshape(n, p.numel()).to(dtype) for g, p in zip(samples, self.params)],
                         dim=1)  # fmt: skip
        if n == 0:
            clipped = flat.new_zeros(flat.shape[1])
        else:
            factor = (self.max_grad_norm / (flat.norm(2, dim=1) + 1e-6)).clamp(max=1.0)
            clipped = factor @ flat
        offset = 0
        for p in self.params:
            part = clipped[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            p.summed_grad = part if p.summed_grad is None else p.summed_grad + part
            p.grad_sample = None
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        std = self.noise_multiplier * self.max_grad_norm
        scale = self.expected_batch_size if self.loss_reduction == "mean" else 1.0
        for p in self.params:
            noise = self.noise_source.normal(p.summed_grad.shape, std=std, like=p.summed_grad)
            p.grad = ((p.summed_grad + noise) / scale).view_as(p)
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True


class SourcedGhostDPOptimizer(SourcedNoise, DPOptimizerFastGradientClipping):
    """Ghost clipping: the clipped sum arrives in ``p.grad`` from Opacus's second backward."""
