"""Adapter injection and the per-layer facts methods need.

LoRA comes from peft (``W = W0 + s·B·A``, ``s = alpha / r`` or ``alpha / sqrt(r)`` with rsLoRA,
``fan_in_fan_out`` for GPT-2's Conv1D). Fed-SB's trainable ``R`` (r x r) sits between a frozen
``A`` and a frozen ``B``: peft's LoRA forward computes ``lora_B(lora_A(x)) * s``, so we replace
``lora_A`` by :class:`LatentDown`, whose forward is ``R(A(x))``. Both ``A`` and ``R`` are
``nn.Linear`` modules, so Opacus's built-in per-sample gradient sampler applies and no module
holds buffers (an Opacus requirement).

Initial A matrices are drawn from a generator seeded by (seed, module name): identical on every
client (required for exact FFA/RoLoRA/Fed-SB aggregation) and different across modules (the
Fed-SB/FedEx reference code reuses one seed for all modules, a bug noted in methods.md §3.3).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..noise import derive_generator
from .builders import BuiltModel

__all__ = [
    "quiet_peft",
    "Layer",
    "LatentDown",
    "inject_lora",
    "inject_latent",
    "layers_without_lora",
    "orthonormal",
]


@dataclass(frozen=True)
class Layer:
    """One adapted linear layer. Names are keys of ``model.named_parameters()``."""

    name: str  # module path
    base: str  # W0, shape (out, in) for nn.Linear, (in, out) when fan_in_fan_out
    a: str | None  # lora_A weight (r, in)
    b: str | None  # lora_B weight (out, r)
    r: str | None  # Fed-SB latent R (r, r)
    fan_in_fan_out: bool
    in_features: int
    out_features: int


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft asks transformers a deprecated question on every wrap; the answer is right."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        yield


def orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    """A rows x cols matrix with orthonormal rows (rows <= cols) or columns (rows > cols)."""
    m = torch.randn(max(rows, cols), min(rows, cols), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(m)
    q = q * torch.sign(torch.diagonal(r))  # unique QR: reproducible across LAPACK builds
    q = q.to(torch.float32)
    return q if rows > cols else q.T.contiguous()


class LatentDown(nn.Module):
    """``x -> R(A(x))``: Fed-SB's frozen down-projection A followed by the trainable R."""

    def __init__(self, down: nn.Linear, rank: int) -> None:
        super().__init__()
        self.down = down
        self.latent = nn.Linear(rank, rank, bias=False)
        nn.init.zeros_(self.latent.weight)  # data-independent start: the model starts at W0

    @property
    def weight(self) -> torch.Tensor:  # peft reads lora_A.weight.dtype
        return self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.latent(self.down(x))


def inject_lora(
    built: BuiltModel,
    *,
    rank: int,
    alpha: float,
    rslora: bool,
    seed: int,
    train_head: bool,
) -> tuple[nn.Module, list[Layer], tuple[str, ...]]:
    """Wrap the base model with peft LoRA. Returns (peft model, layers, head parameter names)."""
    from peft import LoraConfig, get_peft_model

    modules_to_save = [built.head] if (train_head and built.head) else None
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        use_rslora=rslora,
        target_modules=list(built.target_modules),
        fan_in_fan_out=built.fan_in_fan_out,
        lora_dropout=0.0,
        modules_to_save=modules_to_save,
        bias="none",
        layers_to_transform=list(built.layers) or None,
    )
    with quiet_peft():
        model = get_peft_model(built.model, config)
    layers = []
    for mod_name, module in model.named_modules():
        if not (hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})):
            continue
        a = module.lora_A["default"]
        with torch.no_grad():
            # peft's default is kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); keep the
            # distribution, but draw it from a per-module generator.
            bound = 1 / math.sqrt(a.in_features)
            g = derive_generator(seed, "lora_A", mod_name)
            a.weight.copy_(torch.rand(a.weight.shape, generator=g) * 2 * bound - bound)
            module.lora_B["default"].weight.zero_()
        base = module.base_layer
        in_f, out_f = a.in_features, module.lora_B["default"].out_features
        layers.append(
            Layer(
                name=mod_name,
                base=f"{mod_name}.base_layer.weight",
                a=f"{mod_name}.lora_A.default.weight",
                b=f"{mod_name}.lora_B.default.weight",
                r=None,
                fan_in_fan_out=built.fan_in_fan_out,
                in_features=in_f,
                out_features=out_f,
            )
        )
        assert base.weight.numel() == in_f * out_f
    head = tuple(n for n, _ in model.named_parameters() if ".modules_to_save.default." in n)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, layers, head


def inject_latent(model: nn.Module, layers: list[Layer], *, rank: int, seed: int) -> list[Layer]:
    """Turn LoRA layers into Fed-SB layers: orthonormal frozen B and A, trainable R = 0."""
    out = []
    for layer in layers:
        module = model.get_submodule(layer.name)
        down = module.lora_A["default"]
        up = module.lora_B["default"]
        with torch.no_grad():
            down.weight.copy_(
                orthonormal(rank, layer.in_features, derive_generator(seed, "sb_A", layer.name))
            )
            up.weight.copy_(
                orthonormal(layer.out_features, rank, derive_generator(seed, "sb_B", layer.name))
            )
        module.lora_A["default"] = LatentDown(down, rank)
        out.append(
            Layer(
                name=layer.name,
                base=layer.base,
                a=f"{layer.name}.lora_A.default.down.weight",
                b=layer.b,
                r=f"{layer.name}.lora_A.default.latent.weight",
                fan_in_fan_out=layer.fan_in_fan_out,
                in_features=layer.in_features,
                out_features=layer.out_features,
            )
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return out


def layers_without_lora(built: BuiltModel) -> tuple[list[Layer], tuple[str, ...]]:
    """Target layers of the bare model (direct weight averaging trains W itself)."""
    layers = []
    for mod_name, module in built.model.named_modules():
        leaf = mod_name.rsplit(".", 1)[-1]
        index = re.search(r"\.(?:layer|layers|h)\.(\d+)\.", f".{mod_name}.")
        if built.layers and (index is None or int(index.group(1)) not in built.layers):
            continue
        if leaf in built.target_modules and hasattr(module, "weight"):
            w = module.weight
            in_f, out_f = (
                (w.shape[0], w.shape[1]) if built.fan_in_fan_out else (w.shape[1], w.shape[0])
            )
            layers.append(
                Layer(
                    mod_name,
                    f"{mod_name}.weight",
                    None,
                    None,
                    None,
                    built.fan_in_fan_out,
                    in_f,
                    out_f,
                )
            )
    head = tuple(
        n
        for n, _ in built.model.named_parameters()
        if built.head and n.startswith(built.head + ".")
    )
    for p in built.model.parameters():
        p.requires_grad_(False)
    return layers, head
