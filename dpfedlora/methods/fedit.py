"""FedIT: plain FedAvg of both LoRA factors (Zhang et al., "Towards Building the Federated GPT",
ICASSP 2024).

Server: Ā = Σ p_k A_k, B̄ = Σ p_k B_k. **Inexact**: s·B̄Ā ≠ Σ p_k s·B_k A_k; the gap is measured
(tests, audits), not hidden. Under DP both factors carry noise, so the product has a
noise × noise term (methods.md §1).
"""

from __future__ import annotations

from .base import LoRAMethod
from .registry import register_method


@register_method
class FedIT(LoRAMethod):
    name = "fedit"
    exact = False
    TRAINABLE = ("lora_A", "lora_B")

    def noise_prediction(self, params, *, scaling, lr, steps, nu):
        """Linear as FFA (B = 0 at start) plus the noise x noise term s²η⁴T²ν⁴ d r k."""
        nonlinear = sum(
            scaling**2 * lr**4 * steps**2 * nu**4
            * layer.out_features * self.cfg.rank * layer.in_features
            for layer in self.layers
        )  # fmt: skip
        return self._linear_noise(params, scaling, lr, steps, nu), nonlinear
