"""DPOptimizer variants used only by audits (hooks mode; ghost clipping is refused by the audits).

Both act in ``add_noise``, which Opacus calls once per *logical* DP step: physical chunks of a
Poisson batch (``train.physical_batch_tokens``) only accumulate clipped gradients, so a canary
joins a step at most once, exactly like a record.
"""

from __future__ import annotations

import torch

from ..client.dp_optimizer import SourcedDPOptimizer

__all__ = ["SignedNoiseDPOptimizer", "CanaryDPOptimizer"]


class SignedNoiseDPOptimizer(SourcedDPOptimizer):
    """Adds ``sign`` x the noise the source draws (sign in {1, -1, 0}). The source advances
    identically for every sign, so runs with ξ, -ξ and 0 share all other randomness."""

    def __init__(self, optimizer, *, sign: float = 1.0, **kwargs) -> None:
        super().__init__(optimizer, **kwargs)
        self.sign = float(sign)

    def add_noise(self) -> None:
        clean = [p.summed_grad for p in self.params]
        super().add_noise()
        if self.sign == 1.0:
            return
        for p, s in zip(self.params, clean):
            noisy = p.grad.view_as(s)
            p.grad = (s + self.sign * (noisy - s)).view_as(p)


class CanaryDPOptimizer(SignedNoiseDPOptimizer):
    """White-box gradient canaries (Steinke et al. 2023): at each logical step every included
    canary joins with probability q and, if its design lets it speak at that step, contributes
    its direction (norm = the clip norm, i.e. already clipped) to the clipped sum before the
    noise (:mod:`dpfedlora.audit.canaries`)."""

    def __init__(
        self,
        optimizer,
        *,
        design,
        included: torch.Tensor,
        sampling_rate: float,
        canary_generator: torch.Generator,
        **kwargs,
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.design = design
        self.included = included
        self.sampling_rate = sampling_rate
        self.canary_generator = canary_generator
        self.logical_step = 0

    def add_noise(self) -> None:
        drawn = torch.rand(self.included.numel(), generator=self.canary_generator)
        active = (drawn < self.sampling_rate) & self.included
        extra = self.design.contribution(self.logical_step, active)
        for p, e in zip(self.params, extra):
            p.summed_grad = p.summed_grad + e.to(p.summed_grad.dtype).view_as(p.summed_grad)
        self.logical_step += 1
        super().add_noise()
