"""RoLoRA: alternate which factor trains (Chen et al., NeurIPS 2025, arXiv:2502.01755).

Odd rounds train B with A frozen, even rounds train A with B frozen. B goes first: with B = 0 at
start, ∇_A = s·Bᵀ G = 0, so an A-round first would be wasted. Each round averages only the
active factor, which is exact because the other factor is common to all clients; DP noise is
linear within a round.
"""

from __future__ import annotations

from .aggregation import Tensors
from .base import ClientSpec, LoRAMethod
from .registry import register_method


@register_method
class RoLoRA(LoRAMethod):
    name = "rolora"

    def active(self, round_idx: int) -> tuple[str, ...]:
        return ("lora_B",) if round_idx % 2 == 1 else ("lora_A",)

    def noise_prediction(self, params, *, scaling, lr, steps, nu):
        # round 1 trains B with A frozen: FFA's structure
        return self._linear_noise(params, scaling, lr, steps, nu), 0.0

    def download_numel(self, state: Tensors, client: ClientSpec, round_idx: int) -> int:
        # A client needs the factor aggregated in the previous round (its phase's opposite);
        # in round 1 nothing has been aggregated yet (A comes from the shared seed).
        if round_idx == 1:
            return sum(state[n].numel() for n in self.head)
        prev = self.factor_names(self.active(round_idx - 1))
        return sum(state[n].numel() for n in prev) + sum(state[n].numel() for n in self.head)
