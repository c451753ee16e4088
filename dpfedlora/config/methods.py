"""The method sections of the config: one schema per method name, torch-free.

A method's keys are part of the config schema, so they are validated with the rest of the
config before anything is built; the method itself (:mod:`dpfedlora.methods`) names its schema in
``config_cls`` and a test checks that the two registries agree. Methods without keys of their own
use :class:`~dpfedlora.config.schema.MethodConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import ConfigError, MethodConfig, check_choice, check_int, check_number

__all__ = [
    "FedSBConfig",
    "FlexLoRAConfig",
    "FullConfig",
    "METHOD_CONFIGS",
    "register_method_config",
    "method_config_class",
    "FEDSB_INITS",
    "FULL_OPTIMIZERS",
]

FEDSB_INITS = ("random", "public", "private")
FULL_OPTIMIZERS = ("adamw", "galore", "sgd")


@dataclass(frozen=True)
class FedSBConfig(MethodConfig):
    name: str = "fedsb"
    alpha: float = 4.0  # Fed-SB's code always uses alpha = r (s = 1); set it to your rank
    init: str = "random"  # random | public | private
    init_noise_multiplier: float = 5.0  # σ of the private init's Gaussian release
    init_scale: float = 1e-3  # step size η of the sign-gradient "update approximation"
    init_public_fraction: float = 0.1  # share of training data marked public (init=public)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("method.init", self.init, FEDSB_INITS)
        check_number(
            "method.init_noise_multiplier",
            self.init_noise_multiplier,
            low=0.0,
            low_open=True,
            fix="An initialisation from private data must be noised.",
        )
        check_number("method.init_scale", self.init_scale, low=0.0, low_open=True)
        check_number(
            "method.init_public_fraction",
            self.init_public_fraction,
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        )


@dataclass(frozen=True)
class FlexLoRAConfig(MethodConfig):
    name: str = "flexlora"
    # Per-client ranks, cycled over clients. Empty: alternate rank and rank // 2 (heterogeneous).
    ranks: tuple[int, ...] = ()
    # "shard_size": r_k = max(1, round(rank * n_k / max_j n_j)), i.e. richer clients train
    # larger adapters (overrides `ranks`); "": use `ranks`.
    rank_rule: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        for r in self.ranks:
            check_int("method.ranks", r, minimum=1)
        check_choice("method.rank_rule", self.rank_rule, ("", "shard_size"))


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    name: str = "full"
    local_optimizer: str = "adamw"  # adamw | galore | sgd
    galore_rank: int = 4  # rank of GaLore's gradient projection
    galore_update_proj_gap: int = 50  # steps between projector refreshes
    galore_scale: float = 1.0  # multiplies the projected-back update

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("method.local_optimizer", self.local_optimizer, FULL_OPTIMIZERS)
        check_int("method.galore_rank", self.galore_rank, minimum=1)
        check_int("method.galore_update_proj_gap", self.galore_update_proj_gap, minimum=1)
        check_number("method.galore_scale", self.galore_scale, low=0.0, low_open=True)


# method name -> its config schema (the built-ins; register_method adds user methods)
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    "fedit": MethodConfig,
    "ffa": MethodConfig,
    "rolora": MethodConfig,
    "fedex": MethodConfig,
    "fedsb": FedSBConfig,
    "flexlora": FlexLoRAConfig,
    "full": FullConfig,
}


def register_method_config(name: str, cls: type[MethodConfig], *, force: bool = False) -> None:
    if not (isinstance(cls, type) and issubclass(cls, MethodConfig)):
        raise ValueError(f"the config of method {name!r} must subclass MethodConfig.")
    if METHOD_CONFIGS.get(name, cls) is not cls and not force:
        raise ValueError(
            f"method {name!r} already has config {METHOD_CONFIGS[name].__name__}. "
            "Pass force=True to replace it."
        )
    METHOD_CONFIGS[name] = cls


def method_config_class(name: str) -> type[MethodConfig]:
    try:
        return METHOD_CONFIGS[name]
    except KeyError:
        raise ConfigError(
            f"`method.name` must be one of {', '.join(sorted(METHOD_CONFIGS))}. Found {name!r}."
        ) from None
