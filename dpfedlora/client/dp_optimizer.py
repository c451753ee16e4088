"""Opacus DP optimizers whose Gaussian noise comes from a :class:`~dpfedlora.noise.NoiseSource`.

Opacus draws noise from a ``torch.Generator`` (Mersenne Twister); a generator cannot be a CSPRNG,
so :class:`SourcedNoise` replaces ``add_noise`` with the same mechanism (clipped sum plus
N(0, σ²C²) per parameter, once per real step) released by the source's
:meth:`~dpfedlora.noise.NoiseSource.add_noise`: seeded noise is added in the parameter's dtype
exactly as Opacus does, secure noise is added in float64 and rounded once. Everything else —
clipping, accumulation over physical chunks, the division by the expected batch size — stays
Opacus's. Audit variants subclass these (:mod:`dpfedlora.audit.optim`).

Non-finite per-sample gradients. A sample whose per-sample gradient has a NaN or ±inf entry
makes Opacus's clipped sum NaN (its clip factor is NaN, or 0 and 0·∞ = NaN), and a client that
then fails reveals, outside DP, that the sample was in the batch: a server that crafts weights so
that only a chosen record overflows learns its membership from success or failure. So a sample
whose joint per-sample gradient norm ‖g_i‖ (over all trainable tensors together) is not finite
contributes zero — replaced, not scaled, since NaN·0 is NaN. Zero is within the sensitivity
bound (any contribution of norm ≤ C is), so the Gaussian mechanism's guarantee (Abadi et al.
2016, DP-SGD) holds as stated, for the substitution "the record's gradient becomes 0". A row
whose entries are finite but whose norm overflows also contributes zero, as Opacus's factor
C / (‖g_i‖ + 1e-6) = 0 already gives it. The count is kept locally in
:attr:`SourcedNoise.nonfinite_rows` (for the node's log); it is not part of any release.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from ..noise import NoiseSource

__all__ = ["SourcedNoise", "SourcedDPOptimizer", "FusedDPOptimizer", "SourcedGhostDPOptimizer"]


class SourcedNoise:
    """Mixin for an Opacus DPOptimizer: noise from ``noise_source`` instead of a generator, and
    the running count of samples whose non-finite per-sample gradient was zeroed."""

    noise_source: NoiseSource

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise_source: NoiseSource, **kw):
        super().__init__(optimizer, **kw)  # type: ignore[call-arg]
        self.noise_source = noise_source
        # a device tensor once counted, so a step never waits on the device to update it
        self._nonfinite_rows: torch.Tensor | int = 0

    @property
    def nonfinite_rows(self) -> int:
        """Samples so far whose per-sample gradient was not finite and contributed zero. Local
        diagnostics only: it depends on the data and must not leave the data owner's node."""
        return int(self._nonfinite_rows)

    def record_nonfinite_rows(self, bad: torch.Tensor) -> None:
        """Add the number of ``True`` entries of the per-sample mask ``bad`` to the count."""
        self._nonfinite_rows = self._nonfinite_rows + bad.sum()

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm  # type: ignore[attr-defined]
        for p in self.params:  # type: ignore[attr-defined]
            _check_processed_flag(p.summed_grad)
            p.grad = self.noise_source.add_noise(p.summed_grad, std=std).view_as(p)
            _mark_as_processed(p.summed_grad)


class SourcedDPOptimizer(SourcedNoise, DPOptimizer):
    """Hooks mode: per-sample gradients, clipped and summed by Opacus, after the samples whose
    joint per-sample gradient norm is not finite are zeroed (module docstring)."""

    def clip_and_accumulate(self) -> None:
        self._zero_nonfinite_rows()
        super().clip_and_accumulate()

    def _zero_nonfinite_rows(self) -> None:
        samples = self.grad_samples  # one (n, ...) tensor per parameter, chunks concatenated
        if not samples or len(samples[0]) == 0:
            return
        n = len(samples[0])
        device = samples[0].device
        norms = [g.reshape(n, -1).norm(2, dim=1).to(device) for g in samples]
        ok = torch.isfinite(torch.stack(norms, dim=1).norm(2, dim=1))
        self.record_nonfinite_rows(~ok)
        for p, g in zip(self.params, samples):
            # the replacement carries no "processed" flag: check the original's here
            _check_processed_flag(p.grad_sample)
            keep = ok.to(g.device).view(n, *([1] * (g.dim() - 1)))
            p.grad_sample = torch.where(keep, g, torch.zeros((), dtype=g.dtype, device=g.device))


class FusedDPOptimizer(SourcedDPOptimizer):
    """Hooks mode, the default: Opacus's DP step in one pass over the parameters.

    The same arithmetic as Opacus's ``clip_and_accumulate``, ``add_noise`` and ``scale_grad``
    (per-sample norms over all tensors jointly, factor C / (norm + 1e-6) capped at 1, clipped sum
    accumulated over skipped physical chunks, N(0, σ²C²) per tensor from the noise source, then
    division by the expected batch size), without their per-call bookkeeping, which cost more
    than the maths on small adapters. Audits keep the unfused class (they instrument its
    methods); a test checks both give the same update from the same per-sample gradients.

    A row of the (n, D) per-sample matrix whose norm is not finite gets factor 0 and its
    non-finite entries are set to 0, so it adds exactly zero (module docstring). The norm is
    computed anyway; the repair is one in-place ``nan_to_num_`` pass over the matrix, about the
    cost of the norm, done whatever the data, so the work does not depend on which rows were
    bad and the device is never waited on for it.

    The division by the expected batch size B follows the add, as in Opacus; the source does
    both, so secure noise forms (s + z) / B in float64 and rounds once, where the unfused class
    rounds s + z and then divides in the parameter's dtype (a post-processing of the same
    release), and seeded noise keeps Opacus's float32 order bit for bit."""

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
            norms = flat.norm(2, dim=1)
            bad = ~torch.isfinite(norms)
            # NaN·0 is NaN, so a zero factor alone does not remove a row: its non-finite entries
            # become 0 too. In place on the fresh ``flat`` (cat copied); a row with a finite
            # norm has no non-finite entry, so good rows are untouched, bit for bit.
            torch.nan_to_num_(flat, nan=0.0, posinf=0.0, neginf=0.0)
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0).masked_fill(bad, 0.0)
            clipped = factor @ flat
            self.record_nonfinite_rows(bad)
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
            p.grad = self.noise_source.add_noise(p.summed_grad, std=std, divide_by=scale)
            p.grad = p.grad.view_as(p)
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True


class SourcedGhostDPOptimizer(SourcedNoise, DPOptimizerFastGradientClipping):
    """Ghost clipping: the clipped sum arrives in ``p.grad`` from Opacus's second backward.

    Per-sample gradients are never materialised here, so rows cannot be zeroed in the optimizer:
    the ghost step (:mod:`.grad_sample`) reads Opacus's per-sample norms after the backward and,
    when one is not finite, recomputes the clipped sum without those samples and counts them
    with :meth:`record_nonfinite_rows`."""
