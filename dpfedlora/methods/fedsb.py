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

from typing import Any

import torch
from torch import nn

from accounting import Event, Gaussian

from ..config import FedSBConfig
from ..models.adapters import inject_latent, inject_lora
from ..models.builders import BuiltModel
from ..noise import make_noise_source
from ..tasks import TASKS
from .aggregation import Tensors
from .base import ExportedLoRA, Method
from .fedsb_init import apply_sign_svd, gradient_sum
from .registry import register_method


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

    def trainable_key(self, round_idx: int) -> object:
        return None  # the same tensors train every round

    def trainable(self, param_name: str, round_idx: int) -> bool:
        return param_name in self.head or any(param_name == layer.r for layer in self.layers)

    # -- the initialisation (LoRA-SB's gradient SVD), owned here -------------------------
    def public_fraction(self) -> float:
        return self.cfg.init_public_fraction if self.cfg.init == "public" else 0.0

    def init_event(self, private: bool) -> Event | None:
        if self.cfg.init == "private" and private:
            return Gaussian(self.cfg.init_noise_multiplier)
        return None

    def prepare(self, setup: Any) -> None:
        """B, R, A from trunc_r(−η · sign(G)): G on the public share, or the sum of every
        client's clipped, noised gradient sum (one Gaussian release each, spent first)."""
        if self.cfg.init == "random":
            return
        cfg = setup.cfg
        loss = TASKS[cfg.model.task].loss
        if self.cfg.init == "public":
            grads = gradient_sum(
                self, setup.model, loss, setup.public,
                clip_norm=None, noise_multiplier=None, noise_source=None,
            )  # fmt: skip
        else:
            p, grads = cfg.privacy, None
            event = self.init_event(p.private)
            for c in setup.clients:
                if event is not None:  # write-ahead: recorded before the shard is read
                    c.spend(0, "init", event)
                g = gradient_sum(
                    self,
                    setup.model,
                    loss,
                    c.data,
                    clip_norm=p.clip_norm,
                    noise_multiplier=self.cfg.init_noise_multiplier,
                    noise_source=make_noise_source(
                        p.secure_mode, cfg.seed, "sb_init_noise", c.spec.cid
                    ),
                )
                grads = g if grads is None else {k: grads[k] + g[k] for k in grads}
        apply_sign_svd(self, setup.model, grads, step=self.cfg.init_scale)

    # -- analysis and export -------------------------------------------------------------
    def noise_prediction(self, params, *, scaling, lr, steps, nu):
        """B, A orthonormal: ‖B ξ A‖_F = ‖ξ‖_F, so E‖·‖² = s²η²Tν² r² per layer."""
        r = self.cfg.rank
        return len(self.layers) * (scaling * lr) ** 2 * steps * nu**2 * r**2, 0.0

    def export(self, view: Tensors) -> dict[str, ExportedLoRA]:
        # s · B R A = s · (B R) A: R folded into B, a plain rank-r LoRA
        s = self.scaling(None)
        return {
            layer.name: ExportedLoRA(
                (view[layer.b].double() @ view[layer.r].double()).to(torch.float32),
                view[layer.a],
                s,
            )
            for layer in self.layers
        }
