"""FlexLoRA: heterogeneous client ranks, full-size aggregate, SVD redistribution (Bai et al.,
NeurIPS 2024, arXiv:2402.11505).

Client k trains A_k (r_k x in), B_k (out x r_k) with its own scale s_k = alpha / r_k. Server:
ΔW_g = Σ p_k s_k B_k A_k (full size, exact), then each client receives the official split of
trunc_{r_k}(ΔW_g): B_k = U[:, :r_k] diag(S[:r_k]) / s_k, A_k = Vᵀ[:r_k] (all singular values in
B). W0 is never updated. The global (evaluated) model is W0 + ΔW_g.

One shared model serves all ranks: adapters are allocated at max r_k, a client's unused rank
directions are zero in both A and B (so their gradients are exactly zero and the per-sample clip
norm is computed on the released directions only), and ``after_step`` re-zeros them after the
DP noise. Only the first r_k directions are uploaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import FlexLoRAConfig
from ..models.precision import to_host
from .aggregation import (
    Tensors,
    delta_weight,
    exact_factors,
    lora_scaling,
    normalize_weights,
    truncated_split,
    weighted_mean,
)
from .base import ClientSpec, ExportedLoRA, LoRAMethod, clone
from .registry import register_method


@register_method
class FlexLoRA(LoRAMethod):
    name = "flexlora"
    config_cls = FlexLoRAConfig
    TRAINABLE = ("lora_A", "lora_B")

    def _ranks(self) -> tuple[int, ...]:
        return self.cfg.ranks or (self.cfg.rank, max(1, self.cfg.rank // 2))

    def max_rank(self) -> int:
        return self.cfg.rank if self.cfg.rank_rule else max(self._ranks())

    def client_rank(self, index: int, num_examples: int, sizes: Sequence[int] = ()) -> int:
        if self.cfg.rank_rule == "shard_size" and sizes:
            return max(1, round(self.cfg.rank * num_examples / max(sizes)))
        ranks = self._ranks()
        return ranks[index % len(ranks)]

    def ranks_need_all_sizes(self) -> bool:
        return self.cfg.rank_rule == "shard_size"

    def scaling(self, client: ClientSpec | None = None) -> float:
        rank = client.rank if client is not None else self.max_rank()
        return lora_scaling(self.cfg.alpha, rank, self.cfg.rslora)

    # The global state is ΔW_g per layer (key "delta/<layer>") plus the head and the shared
    # initial A (used while ΔW_g is still zero, i.e. before the first aggregation).
    def init_state(self) -> Tensors:
        params = dict(self.model.named_parameters())
        state = {n: to_host(params[n], torch.float32) for n in self.head}
        for layer in self.layers:
            state[layer.a] = to_host(params[layer.a], torch.float32)
            w = params[layer.base]
            state[f"delta/{layer.name}"] = torch.zeros(w.shape, dtype=torch.float32)
        self.base0 = {layer.base: to_host(params[layer.base]) for layer in self.layers}
        return state

    def client_view(self, state: Tensors, client: ClientSpec, round_idx: int) -> Tensors:
        view = {n: state[n].clone() for n in self.head}
        rmax, r = self.max_rank(), client.rank
        s = self.scaling(client)
        for layer in self.layers:
            delta = state[f"delta/{layer.name}"]
            if not torch.any(delta):
                a = state[layer.a].clone()
                b = torch.zeros(layer.out_features, rmax)
            else:
                b_r, a_r = truncated_split(delta, r, s, fan_in_fan_out=layer.fan_in_fan_out)
                b = torch.zeros(layer.out_features, rmax)
                a = torch.zeros(rmax, layer.in_features)
                b[:, :r], a[:r] = b_r, a_r
            a[r:] = 0.0
            b[:, r:] = 0.0
            view[layer.a], view[layer.b] = a, b
            view[layer.base] = self.base0[layer.base].clone()
        return view

    def restored_names(self) -> list[str]:
        return [layer.base for layer in self.layers]

    def after_step(self, params: dict[str, nn.Parameter], client: ClientSpec) -> None:
        r = client.rank
        with torch.no_grad():
            for layer in self.layers:
                params[layer.a][r:] = 0.0
                params[layer.b][:, r:] = 0.0

    def payload(
        self, trained: Tensors, received: Tensors, client: ClientSpec, round_idx: int
    ) -> Tensors:
        out = {n: trained[n].clone() for n in self.head}
        for layer in self.layers:
            out[layer.a] = trained[layer.a][: client.rank].clone()
            out[layer.b] = trained[layer.b][:, : client.rank].clone()
        return out

    def aggregate(
        self,
        payloads: Sequence[Tensors],
        weights: Sequence[float],
        state: Tensors,
        clients: Sequence[ClientSpec],
        round_idx: int,
    ) -> Tensors:
        new = clone(state)
        p = normalize_weights(weights)
        new.update(weighted_mean([{n: pl[n] for n in self.head} for pl in payloads], p))
        for layer in self.layers:
            new[f"delta/{layer.name}"] = sum(
                w
                * delta_weight(
                    pl[layer.b], pl[layer.a], self.scaling(c), fan_in_fan_out=layer.fan_in_fan_out
                )
                for w, pl, c in zip(p, payloads, clients)
            )
        return new

    def eval_view(self, state: Tensors) -> Tensors:
        view = {n: state[n].clone() for n in self.head}
        for layer in self.layers:
            view[layer.base] = self.base0[layer.base] + state[f"delta/{layer.name}"]
            view[layer.a] = torch.zeros(self.max_rank(), layer.in_features)
            view[layer.b] = torch.zeros(layer.out_features, self.max_rank())
        return view

    def download_numel(self, state: Tensors, client: ClientSpec, round_idx: int) -> int:
        per_layer = sum(client.rank * (lay.in_features + lay.out_features) for lay in self.layers)
        return per_layer + sum(state[n].numel() for n in self.head)

    def effective_deltas(self, view: Tensors, client: ClientSpec | None = None) -> Tensors:
        if client is None:  # a global/eval view: the change sits in the base weight
            return {layer.name: view[layer.base] - self.base0[layer.base] for layer in self.layers}
        return super().effective_deltas(view, client)

    def client_update(self, view: Tensors, payload: Tensors, client: ClientSpec) -> Tensors:
        # the uploaded r_k directions, back in the max-rank layout (the rest stayed zero)
        out = {**view, **{n: payload[n] for n in self.head}}
        r = client.rank
        for layer in self.layers:
            a, b = torch.zeros_like(view[layer.a]), torch.zeros_like(view[layer.b])
            a[:r], b[:, :r] = payload[layer.a], payload[layer.b]
            out[layer.a], out[layer.b] = a, b
        return out

    def export(self, view: Tensors) -> dict[str, ExportedLoRA]:
        # ΔW_g is full size: exported at its numerical rank, exactly (no truncation)
        out = {}
        for layer in self.layers:
            delta = view[layer.base] - self.base0[layer.base]
            b, a = exact_factors(delta, fan_in_fan_out=layer.fan_in_fan_out)
            out[layer.name] = ExportedLoRA(b, a, 1.0)
        return out
