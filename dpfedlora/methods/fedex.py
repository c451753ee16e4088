"""FedEx-LoRA: exact aggregation with a residual folded into the base weight (Singhal, Ponkshe,
Vepakomma, ACL 2025, arXiv:2410.09432).

Server, per adapted layer (weights p_k):
    Ā = Σ p_k A_k,  B̄ = Σ p_k B_k,
    W0 ← W0 + [Σ p_k s B_k A_k − s B̄ Ā]   (in W's layout, transposed only for fan_in_fan_out)
so the global model equals W0 + Σ p_k s B_k A_k exactly. Clients receive Ā, B̄ and the updated
W0 (counted in download bytes as a dense d x k residual). The residual is post-processing of the
DP uploads (no extra privacy cost).
"""

from __future__ import annotations

from collections.abc import Sequence

from .aggregation import Tensors, delta_weight, exact_factors, normalize_weights
from .base import ClientSpec, ExportedLoRA, LoRAMethod
from .registry import register_method


@register_method
class FedEx(LoRAMethod):
    name = "fedex"
    TRAINABLE = ("lora_A", "lora_B")

    def managed_names(self) -> list[str]:
        return super().managed_names() + [layer.base for layer in self.layers]

    def aggregate(
        self,
        payloads: Sequence[Tensors],
        weights: Sequence[float],
        state: Tensors,
        clients: Sequence[ClientSpec],
        round_idx: int,
    ) -> Tensors:
        new = super().aggregate(payloads, weights, state, clients, round_idx)  # FedAvg of A, B
        p = normalize_weights(weights)
        s = self.scaling()
        for layer in self.layers:
            fifo = layer.fan_in_fan_out
            exact = sum(
                w * delta_weight(pl[layer.b], pl[layer.a], s, fan_in_fan_out=fifo)
                for w, pl in zip(p, payloads)
            )
            approx = delta_weight(new[layer.b], new[layer.a], s, fan_in_fan_out=fifo)
            new[layer.base] = state[layer.base] + (exact - approx)
        return new

    def download_numel(self, state: Tensors, client: ClientSpec, round_idx: int) -> int:
        factors = super().download_numel(state, client, round_idx)
        residual = sum(state[layer.base].numel() for layer in self.layers) if round_idx > 1 else 0
        return factors + residual

    def effective_deltas(self, view: Tensors, client: ClientSpec | None = None) -> Tensors:
        # Relative to the *initial* W0: adapter product plus everything folded into the base.
        out = super().effective_deltas(view, client)
        for layer in self.layers:
            out[layer.name] = out[layer.name] + (view[layer.base] - self.base0[layer.base])
        return out

    def export(self, view: Tensors) -> dict[str, ExportedLoRA]:
        # the residual folded into W0 and the adapter product, as one exact low-rank factor pair
        total = self.effective_deltas(view, None)
        out = {}
        for layer in self.layers:
            b, a = exact_factors(total[layer.name], fan_in_fan_out=layer.fan_in_fan_out)
            out[layer.name] = ExportedLoRA(b, a, 1.0)
        return out

    def init_state(self) -> Tensors:
        state = super().init_state()
        self.base0 = {layer.base: state[layer.base].clone() for layer in self.layers}
        return state
