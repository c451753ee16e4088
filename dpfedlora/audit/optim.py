"""DPOptimizer variants used only by audits."""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer

__all__ = ["SignedNoiseDPOptimizer", "CanaryDPOptimizer"]


class SignedNoiseDPOptimizer(DPOptimizer):
    """Adds ``sign`` x the noise Opacus would add (sign in {1, -1, 0}). The generator advances
    identically for every sign, so runs with ξ, -ξ and 0 share all other randomness."""

    def __init__(self, optimizer, *, sign: float, **kwargs) -> None:
        super().__init__(optimizer, **kwargs)
        self.sign = float(sign)

    def add_noise(self) -> None:
        super().add_noise()
        for p in self.params:
            if p.summed_grad is None:
                continue
            noisy = p.grad.view_as(p.summed_grad)
            p.grad = (p.summed_grad + self.sign * (noisy - p.summed_grad)).view_as(p)


class CanaryDPOptimizer(DPOptimizer):
    """White-box "Dirac" gradient canaries (Steinke et al. 2023): at each step every included
    canary joins the Poisson batch with probability q, contributing its fixed direction (norm =
    the clip norm, i.e. already clipped) to the clipped sum before the noise."""

    def __init__(
        self,
        optimizer,
        *,
        directions: list[torch.Tensor],
        included: torch.Tensor,
        sampling_rate: float,
        canary_generator: torch.Generator,
        **kwargs,
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.directions = directions  # per parameter: [m, *param.shape]
        self.included = included
        self.sampling_rate = sampling_rate
        self.canary_generator = canary_generator

    def clip_and_accumulate(self) -> None:
        super().clip_and_accumulate()
        m = self.included.numel()
        drawn = torch.rand(m, generator=self.canary_generator) < self.sampling_rate
        active = (drawn & self.included).float()
        for p, d in zip(self.params, self.directions):
            extra = torch.einsum("m,m...->...", active, d)
            p.summed_grad = extra if p.summed_grad is None else p.summed_grad + extra
