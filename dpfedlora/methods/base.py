"""The Method contract and its registry.

A method says which tensors train in a round, what a client sends (DP sensitivity, i.e. the clip
norm, is defined on exactly the trainable tensors, and the payload is derived from them only),
how the server aggregates (a pure function), and what each client receives.

State: the server's global state is a dict of named tensors (adapter factors, the head, and for
some methods base weights or a full-size ΔW). ``client_view`` turns it into the tensors a
client loads into the shared model; ``eval_view`` into the tensors of the global model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from accounting import Event

from ..config import MethodConfig, TrainConfig
from ..models.adapters import Layer, inject_lora
from ..models.builders import BuiltModel
from ..models.precision import to_host
from .aggregation import Tensors, delta_weight, lora_scaling, normalize_weights, weighted_mean
from .optimizers import make_optimizer

__all__ = ["ClientSpec", "Method", "LoRAMethod", "ExportedLoRA", "clone", "aggregation_gap"]


@dataclass(frozen=True)
class ClientSpec:
    cid: str
    index: int
    num_examples: int
    rank: int  # adapter rank for this client (differs only for FlexLoRA)


def clone(t: Tensors) -> Tensors:
    return {k: v.detach().clone() for k, v in t.items()}


@dataclass(frozen=True)
class ExportedLoRA:
    """One adapted layer as a plain LoRA: ΔW = scaling · B A (peft's layout and convention)."""

    b: torch.Tensor  # (out, r)
    a: torch.Tensor  # (r, in)
    scaling: float


class Method:
    """Base class. Subclasses set ``name``, ``config_cls``, ``exact`` and override as needed.

    Lifecycle: ``setup`` (inject adapters) -> ``prepare`` (a data-dependent initialisation, if
    any, spent through the clients' budgets) -> ``init_state`` -> rounds of ``client_view`` /
    ``payload`` / ``aggregate`` -> ``eval_view`` and ``export``."""

    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    exact: ClassVar[bool] = True  # aggregated effective weights == mean of clients' (a test checks)

    def __init__(self, cfg: MethodConfig, *, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.layers: list[Layer] = []
        self.head: tuple[str, ...] = ()
        self.model: nn.Module | None = None

    # -- set-up -----------------------------------------------------------------------
    def setup(self, built: BuiltModel, *, train_head: bool) -> nn.Module:
        """Inject adapters into the shared model; return the model clients train."""
        raise NotImplementedError

    def init_state(self) -> Tensors:
        """The initial global state (a snapshot of the managed tensors)."""
        params = dict(self.model.named_parameters())
        # float32 on the host: the server aggregates there, in full precision, whatever the
        # base's dtype and device
        return {n: to_host(params[n], torch.float32) for n in self.managed_names()}

    def managed_names(self) -> list[str]:
        raise NotImplementedError

    def client_rank(self, index: int, num_examples: int, sizes: Sequence[int] = ()) -> int:
        return self.cfg.rank

    def ranks_need_all_sizes(self) -> bool:
        """Whether a client's rank depends on the other shards' sizes (a data owner's node
        holding only its own file cannot compute it)."""
        return False

    def scaling(self, client: ClientSpec | None = None) -> float:
        return lora_scaling(self.cfg.alpha, self.cfg.rank, self.cfg.rslora)

    def weight(self, client: ClientSpec) -> float:
        """The client's aggregation weight p_k before normalisation (``method.weighting``)."""
        return float(client.num_examples) if self.cfg.weighting == "shard_size" else 1.0

    def public_fraction(self) -> float:
        """Share of the training data this method marks public (removed from every shard)."""
        return 0.0

    def init_event(self, private: bool) -> Event | None:
        """The release each client makes in ``prepare`` (planned with the training rounds)."""
        return None

    def prepare(self, setup: Any) -> None:
        """A data-dependent initialisation before round 1 (default: none). ``setup`` holds the
        clients, the public data and the trainer; private reads are spent through each
        client's budget before they happen."""

    def make_optimizer(self, params: list[nn.Parameter], train: TrainConfig):
        """The local optimizer (``train.optimizer``); a method may choose its own."""
        return make_optimizer(train.optimizer, params, train)

    # -- per round --------------------------------------------------------------------
    def trainable(self, param_name: str, round_idx: int) -> bool:
        raise NotImplementedError

    def trainable_names(self, round_idx: int) -> list[str]:
        """Names trained in ``round_idx``. Called per client per round, so it is cached by the
        trainable set's key (``trainable_key``): the model's parameters never change after
        ``setup``, and a per-call scan with per-name set building cost ~1 ms per client."""
        key = (id(self.model), self.trainable_key(round_idx))
        cache = self.__dict__.setdefault("_trainable_cache", {})
        if key not in cache:
            cache[key] = [
                n for n, _ in self.model.named_parameters() if self.trainable(n, round_idx)
            ]
        return list(cache[key])

    def trainable_union(self) -> list[str]:
        """Every name that trains in some round (methods alternate at most two sets, RoLoRA's
        A and B phases), sorted: what the trainer prepares, the planner sizes and the
        low-precision path keeps float32."""
        return sorted(set(self.trainable_names(1)) | set(self.trainable_names(2)))

    def trainable_key(self, round_idx: int) -> object:
        """What the trainable set depends on (default: the round itself)."""
        return round_idx

    def client_view(self, state: Tensors, client: ClientSpec, round_idx: int) -> Tensors:
        return clone(state)

    def payload(
        self, trained: Tensors, received: Tensors, client: ClientSpec, round_idx: int
    ) -> Tensors:
        """Default: the trained tensors themselves (FedAvg of parameters)."""
        return clone(trained)

    def aggregate(
        self,
        payloads: Sequence[Tensors],
        weights: Sequence[float],
        state: Tensors,
        clients: Sequence[ClientSpec],
        round_idx: int,
    ) -> Tensors:
        """Default: weighted mean of the payload tensors replaces them in the state."""
        new = clone(state)
        new.update(weighted_mean(payloads, weights))
        return new

    def client_update(self, view: Tensors, payload: Tensors, client: ClientSpec) -> Tensors:
        """The client's trained tensors as the server rebuilds them from its payload (for the
        measured aggregation gap). Default: the payload is the trained tensors."""
        return {**view, **payload}

    def eval_view(self, state: Tensors) -> Tensors:
        return clone(state)

    def restored_names(self) -> list[str]:
        """Frozen tensors a client view may carry, only at their values when the model was
        built (FlexLoRA restores the base weights its evaluation view changed in a shared
        model). A broadcast that sets any of them to another value is refused."""
        return []

    def after_step(self, params: dict[str, nn.Parameter], client: ClientSpec) -> None:
        """Hook after each optimizer step (FlexLoRA keeps padded rank directions at zero)."""

    def download_numel(self, state: Tensors, client: ClientSpec, round_idx: int) -> int:
        """Elements a client must receive before training this round (protocol, not memory)."""
        return sum(state[n].numel() for n in self.trainable_names(round_idx) if n in state)

    # -- analysis and export ------------------------------------------------------------
    def noise_prediction(
        self, params: dict[str, torch.Tensor], *, scaling: float, lr: float, steps: int, nu: float
    ) -> tuple[float, float] | None:
        """Closed-form E‖·‖² of the (linear, non-linear) noise in one client's first-round ΔW
        under plain SGD (methods.md §1; ν = σC/B); None where the method has no closed form."""
        return None

    def export(self, view: Tensors) -> dict[str, ExportedLoRA] | None:
        """The global model's adapters as plain LoRA factors per layer (None: not a LoRA)."""
        s = self.scaling(None)
        return {layer.name: ExportedLoRA(view[layer.b], view[layer.a], s) for layer in self.layers}

    def effective_deltas(self, view: Tensors, client: ClientSpec | None = None) -> Tensors:
        """Per adapted layer, the change the adapter makes to W0: s · B (R) A in W's layout."""
        s = self.scaling(client)
        out = {}
        for layer in self.layers:
            r = view[layer.r] if layer.r else None
            out[layer.name] = delta_weight(
                view[layer.b], view[layer.a], s, fan_in_fan_out=layer.fan_in_fan_out, r=r
            )
        return out


class LoRAMethod(Method):
    """Shared set-up for the peft-LoRA family (fedit, ffa, rolora, fedex, flexlora)."""

    def _linear_noise(self, params, scaling, lr, steps, nu) -> float:
        """FFA/RoLoRA/FedIT from B = 0: E‖s·η·Σξ_B·A‖² = s²η²Tν² d ‖A‖_F² per layer."""
        return sum(
            (scaling * lr) ** 2 * steps * nu**2 * layer.out_features
            * float(params[layer.a].double().pow(2).sum())
            for layer in self.layers
        )  # fmt: skip

    TRAINABLE: ClassVar[tuple[str, ...]] = ("lora_A", "lora_B")

    def setup(self, built: BuiltModel, *, train_head: bool) -> nn.Module:
        self.model, self.layers, self.head = inject_lora(
            built,
            rank=self.max_rank(),
            alpha=self.cfg.alpha,
            rslora=self.cfg.rslora,
            seed=self.seed,
            train_head=train_head,
        )
        return self.model

    def max_rank(self) -> int:
        return self.cfg.rank

    def managed_names(self) -> list[str]:
        return [n for layer in self.layers for n in (layer.a, layer.b)] + list(self.head)

    def factor_names(self, kinds: tuple[str, ...]) -> set[str]:
        names = set()
        for layer in self.layers:
            if "lora_A" in kinds:
                names.add(layer.a)
            if "lora_B" in kinds:
                names.add(layer.b)
        return names

    def trainable(self, param_name: str, round_idx: int) -> bool:
        return param_name in self.factor_names(self.active(round_idx)) or param_name in self.head

    def active(self, round_idx: int) -> tuple[str, ...]:
        return self.TRAINABLE

    def trainable_key(self, round_idx: int) -> object:
        return self.active(round_idx)  # RoLoRA: two sets; every other LoRA method: one


def aggregation_gap(
    method: Method,
    client_views: Sequence[Tensors],
    client_specs: Sequence[ClientSpec],
    weights: Sequence[float],
    new_state: Tensors,
) -> float:
    """Relative Frobenius gap between the aggregated model's effective ΔW and the weighted mean
    of the clients' effective ΔW (after local training), summed over adapted layers:

        ‖ΔW_global − Σ_k p_k ΔW_k‖ / max(‖Σ_k p_k ΔW_k‖, tiny)

    Zero (to float precision) for exact methods; FedIT's inexactness shows up here.
    ``client_views`` are each client's received view updated with its trained tensors.
    """
    p = normalize_weights(weights)
    target: Tensors = {}
    for w, view, spec in zip(p, client_views, client_specs):
        for name, d in method.effective_deltas(view, spec).items():
            target[name] = target.get(name, 0) + w * d.double()
    glob = method.effective_deltas(method.eval_view(new_state), None)
    num = sum(float((glob[n].double() - target[n]).pow(2).sum()) for n in target)
    den = sum(float(target[n].pow(2).sum()) for n in target)
    return (num**0.5) / max(den**0.5, 1e-30)
