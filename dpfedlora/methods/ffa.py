"""FFA-LoRA: freeze A, train and average only B (Sun, Li, Li, Ding, ICLR 2024,
arXiv:2403.12313).

A is drawn from a per-module seeded generator, so it is identical on every client without being
sent. Aggregation is exact: Σ p_k s B_k A = s (Σ p_k B_k) A, and DP noise reaches ΔW linearly
(s · ξ_B · A).
"""

from __future__ import annotations

from .base import LoRAMethod
from .registry import register_method


@register_method
class FFA(LoRAMethod):
    name = "ffa"
    TRAINABLE = ("lora_B",)

    def noise_prediction(self, params, *, scaling, lr, steps, nu):
        return self._linear_noise(params, scaling, lr, steps, nu), 0.0
