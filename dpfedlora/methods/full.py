"""Direct weight averaging of the target modules' full weights (Mahla & Ramakrishnan,
arXiv:2410.23111), optionally with a GaLore local optimizer.

Clients train W of each target module (and the head) and send the change W_k − W; the server
adds Σ p_k (W_k − W). Exact (FedAvg) and linear in the DP noise, but the noise lives in d x k
dimensions per module, so the signal-to-noise ratio is poor under DP.

GaLore (Zhao et al. 2024) keeps Adam state in a rank-r projection of each 2-D gradient. Under DP
the projector is computed from the already-noised gradient, which is post-processing.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..config import FullConfig, TrainConfig
from ..models.adapters import layers_without_lora
from ..models.builders import BuiltModel
from .aggregation import Tensors, weighted_mean
from .base import ClientSpec, Method, clone
from .galore import GaLoreAdamW
from .optimizers import make_optimizer
from .registry import register_method


@register_method
class Full(Method):
    name = "full"
    config_cls = FullConfig

    def setup(self, built: BuiltModel, *, train_head: bool) -> nn.Module:
        self.layers, head = layers_without_lora(built)
        self.head = head if train_head else ()
        self.model = built.model
        return self.model

    def managed_names(self) -> list[str]:
        return [layer.base for layer in self.layers] + list(self.head)

    def trainable_key(self, round_idx: int) -> object:
        return None  # the same tensors train every round

    def trainable(self, param_name: str, round_idx: int) -> bool:
        return param_name in self.head or any(param_name == layer.base for layer in self.layers)

    def make_optimizer(self, params: list[nn.Parameter], train: TrainConfig):
        if self.cfg.local_optimizer != "galore":
            return make_optimizer(self.cfg.local_optimizer, params, train)
        return GaLoreAdamW(
            params,
            lr=train.lr,
            rank=self.cfg.galore_rank,
            update_proj_gap=self.cfg.galore_update_proj_gap,
            scale=self.cfg.galore_scale,
            weight_decay=train.weight_decay,
        )

    def payload(
        self, trained: Tensors, received: Tensors, client: ClientSpec, round_idx: int
    ) -> Tensors:
        return {n: trained[n] - received[n] for n in trained}

    def aggregate(
        self,
        payloads: Sequence[Tensors],
        weights: Sequence[float],
        state: Tensors,
        clients: Sequence[ClientSpec],
        round_idx: int,
    ) -> Tensors:
        new = clone(state)
        for n, mean_change in weighted_mean(payloads, weights).items():
            new[n] = state[n] + mean_change
        return new

    def client_update(self, view: Tensors, payload: Tensors, client: ClientSpec) -> Tensors:
        return {**view, **{n: view[n] + d for n, d in payload.items()}}

    def export(self, view: Tensors) -> None:
        return None  # not an adapter: exported as the merged model

    def effective_deltas(self, view: Tensors, client: ClientSpec | None = None) -> Tensors:
        return {layer.name: view[layer.base] - self.base0[layer.base] for layer in self.layers}

    def init_state(self) -> Tensors:
        state = super().init_state()
        self.base0 = {layer.base: state[layer.base].clone() for layer in self.layers}
        return state
