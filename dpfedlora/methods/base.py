"""The Method contract and its registry.

A method says which tensors train in a round, what a client sends (DP sensitivity, i.e. the clip
norm, is defined on exactly the trainable tensors, and the payload is derived from them only),
how the server aggregates (a pure function), and what each client receives.

State: the server's global state is a dict of named tensors (adapter factors, the head, and for
some methods base weights or a full-size ΔW). ``client_view`` turns it into the tensors a
client loads into the shared model; ``eval_view`` into the tensors of the global model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..adapters import Layer, inject_lora
from ..aggregation import Tensors, delta_weight, lora_scaling, weighted_mean
from ..config import ConfigError, MethodConfig
from ..models import BuiltModel

__all__ = [
    "ClientSpec",
    "Method",
    "LoRAMethod",
    "METHODS",
    "register_method",
    "make_method",
    "method_config_class",
    "clone",
]


@dataclass(frozen=True)
class ClientSpec:
    cid: str
    index: int
    num_examples: int
    rank: int  # adapter rank for this client (differs only for FlexLoRA)


def clone(t: Tensors) -> Tensors:
    return {k: v.detach().clone() for k, v in t.items()}


class Method:
    """Base class. Subclasses set ``name``, ``config_cls``, ``exact`` and override as needed."""

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
        return {n: params[n].detach().clone() for n in self.managed_names()}

    def managed_names(self) -> list[str]:
        raise NotImplementedError

    def client_rank(self, index: int, num_examples: int, sizes: Sequence[int] = ()) -> int:
        return self.cfg.rank

    def scaling(self, client: ClientSpec | None = None) -> float:
        return lora_scaling(self.cfg.alpha, self.cfg.rank, self.cfg.rslora)

    # -- per round --------------------------------------------------------------------
    def trainable(self, param_name: str, round_idx: int) -> bool:
        raise NotImplementedError

    def trainable_names(self, round_idx: int) -> list[str]:
        return [n for n, _ in self.model.named_parameters() if self.trainable(n, round_idx)]

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

    def eval_view(self, state: Tensors) -> Tensors:
        return clone(state)

    def after_step(self, params: dict[str, nn.Parameter], client: ClientSpec) -> None:
        """Hook after each optimizer step (FlexLoRA keeps padded rank directions at zero)."""

    def download_numel(self, state: Tensors, client: ClientSpec, round_idx: int) -> int:
        """Elements a client must receive before training this round (protocol, not memory)."""
        return sum(state[n].numel() for n in self.trainable_names(round_idx) if n in state)

    # -- analysis ---------------------------------------------------------------------
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


# ------------------------------------------------------------------------------ registry
METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method], *, force: bool = False) -> type[Method]:
    """Class decorator: register a method under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"method class {cls.__name__} needs a non-empty `name`.")
    if name in METHODS and not force:
        raise ValueError(f"method {name!r} is already registered. Pass force=True to replace it.")
    if not issubclass(cls.config_cls, MethodConfig):
        raise ValueError(f"{cls.__name__}.config_cls must subclass MethodConfig.")
    METHODS[name] = cls
    return cls


def method_config_class(name: str) -> type[MethodConfig]:
    try:
        return METHODS[name].config_cls
    except KeyError:
        raise ConfigError(
            f"`method.name` must be one of {', '.join(sorted(METHODS))}. Found {name!r}."
        ) from None


def make_method(cfg: MethodConfig, *, seed: int) -> Method:
    cls = METHODS.get(cfg.name)
    if cls is None:
        method_config_class(cfg.name)  # raises the listing error
    assert cls is not None
    if not isinstance(cfg, cls.config_cls):
        raise ConfigError(f"method {cfg.name!r} needs a {cls.config_cls.__name__}.")
    return cls(cfg, seed=seed)


def select(t: Tensors, keep: Callable[[str], bool]) -> Tensors:
    return {k: v for k, v in t.items() if keep(k)}


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
    from ..aggregation import normalize_weights

    p = normalize_weights(weights)
    target: Tensors = {}
    for w, view, spec in zip(p, client_views, client_specs):
        for name, d in method.effective_deltas(view, spec).items():
            target[name] = target.get(name, 0) + w * d.double()
    glob = method.effective_deltas(method.eval_view(new_state), None)
    num = sum(float((glob[n].double() - target[n]).pow(2).sum()) for n in target)
    den = sum(float(target[n].pow(2).sum()) for n in target)
    return (num**0.5) / max(den**0.5, 1e-30)
