"""Fed-SB: train only an r x r matrix R between fixed B and A (Singhal et al.,
arXiv:2502.15436; LoRA-SB arXiv:2411.19557).

W = W0 + s · B R A with B (d x r) and A (r x k) frozen and shared, R trainable
(``nn.Linear(r, r, bias=False)``). Averaging R is exact, communication is r² per layer, and with
orthonormal B and A the DP noise on ΔW is isometric: ‖B ξ A‖_F = ‖ξ‖_F.

Initialisation (``method.init``):
* ``random``: orthonormal B, A from per-module seeds, R = 0 (data-independent, free).
* ``public``: B, A, R from the truncated SVD of -sign(gradient) on data the config marks public.
* ``private``: the same from clipped, noised per-sample gradients of each client's shard,
  recorded in the ledger as its own release (scope "init").
Under DP, an initialisation from private data without noise is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..adapters import inject_latent, inject_lora
from ..config import ConfigError, MethodConfig
from ..models import BuiltModel
from .base import Method, register_method

INITS = ("random", "public", "private")


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
        if self.init not in INITS:
            raise ConfigError(
                f"`method.init` must be one of {', '.join(INITS)}. Found {self.init!r}."
            )
        if not self.init_noise_multiplier > 0:
            raise ConfigError(
                "`method.init_noise_multiplier` must be > 0: an initialisation from private "
                f"data must be noised. Found {self.init_noise_multiplier!r}."
            )


@register_method
class FedSB(Method):
    name = "fedsb"
    config_cls = FedSBConfig

    def setup(self, built: BuiltModel, *, train_head: bool) -> nn.Module:
        model, layers, self.head = inject_lora(
            built,
            rank=self.cfg.rank,
            alpha=self.cfg.alpha,
            rslora=self.cfg.rslora,
            seed=self.seed,
            train_head=train_head,
        )
        self.layers = inject_latent(model, layers, rank=self.cfg.rank, seed=self.seed)
        self.model = model
        return model

    def managed_names(self) -> list[str]:
        # B and A are included so a data-dependent init reaches every client through the state.
        return [n for layer in self.layers for n in (layer.a, layer.b, layer.r)] + list(self.head)

    def trainable(self, param_name: str, round_idx: int) -> bool:
        return param_name in self.head or any(param_name == layer.r for layer in self.layers)
