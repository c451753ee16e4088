"""FedIT: plain FedAvg of both LoRA factors (Zhang et al., "Towards Building the Federated GPT",
ICASSP 2024).

Server: Ā = Σ p_k A_k, B̄ = Σ p_k B_k. **Inexact**: s·B̄Ā ≠ Σ p_k s·B_k A_k; the gap is measured
(tests, audits), not hidden. Under DP both factors carry noise, so the product has a
noise × noise term (methods.md §1).
"""

from __future__ import annotations

from .base import LoRAMethod, register_method


@register_method
class FedIT(LoRAMethod):
    name = "fedit"
    exact = False
    TRAINABLE = ("lora_A", "lora_B")
