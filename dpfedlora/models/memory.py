"""Predicted peak memory of one DP step, and the choices that follow from it.

Formulas (bytes; measured against saved tensors for Llama widths, gpu_path.md §4), per token
per transformer layer, d hidden, d_kv key/value width, H heads, d_ff MLP width, e the base's
bytes per element:

* frozen base: 2·(4d + 4) (two norm inputs upcast to float32, plus rstd) + e·(2d + 2·d_kv)
  (attention q, out, k, v) + 4H (log-sum-exp) + 3·e·d_ff (gate, up, activation);
* float32 adapters: per adapted Linear 4·d_in (peft's float32 copy of its input, only over a
  low-precision base) + 4r (lora_A's output);
* reentrant gradient checkpointing keeps e·2d per layer, plus one layer's full set;
* causal-LM logits and the float32 cross-entropy: 14 bytes per token and vocabulary entry;
* ``hooks`` per-sample gradients: B·P·4 for P trainable numbers; ``ghost`` keeps none but needs
  transient (B, T, T) products, about 3·B·T²·4 per adapted Linear;
* trainable state: parameter, gradient, summed gradient and two Adam moments, 5·P·4.

``privacy.grad_sample_mode: auto`` takes hooks unless its peak does not fit and ghost's does;
``train.physical_batch_tokens: auto`` takes the largest chunk whose peak fits in 80 % of the
free memory of the device.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ModelShape", "MemoryPlan", "plan_memory", "free_bytes", "model_shape"]

HEADROOM = 0.8  # plan to use at most this share of the free memory


@dataclass(frozen=True)
class ModelShape:
    """What the formulas need to know of a model and its adapters."""

    hidden: int
    kv_width: int
    heads: int
    ffn: int
    layers: int
    vocab: int
    weight_bytes: int  # the frozen base as stored (quantised layers count their packed size)
    trainable: int  # P, trainable numbers
    adapted_inputs: tuple[int, ...]  # d_in of each adapted Linear, all layers
    rank: int
    element_bytes: int  # e


def _attr(conf, *names, default=0):
    for n in names:
        v = getattr(conf, n, None)
        if v:
            return v
    return default


def model_shape(model: nn.Module, trainable: list[str], rank: int) -> ModelShape:
    """The shape of ``model`` (on any device, including meta) with ``trainable`` tensors."""
    conf = getattr(model, "config", None) or model.base_model.config
    hidden = _attr(conf, "hidden_size", "n_embd", "d_model")
    heads = _attr(conf, "num_attention_heads", "n_head", default=1)
    head_dim = _attr(conf, "head_dim", default=hidden // max(heads, 1))
    kv = _attr(conf, "num_key_value_heads", default=heads) * head_dim
    from .prefix_cache import cached_layers

    params = dict(model.named_parameters())
    wanted = set(trainable)
    frozen = [p for n, p in params.items() if n not in wanted]
    weight_bytes = sum(p.numel() * p.element_size() for p in frozen)
    floats = [p.dtype for p in frozen if p.is_floating_point()]
    element = torch.empty((), dtype=floats[0]).element_size() if floats else 4
    inputs = []
    for name in trainable:
        if ".lora_A." in name:
            inputs.append(int(params[name].shape[1]))
    return ModelShape(
        hidden=int(hidden),
        kv_width=int(kv),
        heads=int(heads),
        ffn=int(_attr(conf, "intermediate_size", "n_inner", default=4 * hidden)),
        # layers a step runs: those below a frozen-prefix cache hold no activations
        layers=max(
            1, int(_attr(conf, "num_hidden_layers", "n_layer", default=1)) - cached_layers(model)
        ),
        vocab=int(_attr(conf, "vocab_size", default=0)),
        weight_bytes=int(weight_bytes),
        trainable=sum(params[n].numel() for n in trainable),
        adapted_inputs=tuple(inputs),
        rank=rank,
        element_bytes=int(element),
    )


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's free memory, or the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    free: int
    weights: int
    trainable_state: int
    activations_per_token: int
    logits_per_token: int
    seq_len: int
    batch: int  # examples per physical chunk
    hooks_grad_sample: int
    ghost_transient: int
    mode: str
    physical_batch_tokens: int
    checkpointing: bool

    def peak(self, mode: str | None = None) -> int:
        mode = mode or self.mode
        tokens = self.batch * self.seq_len
        per_sample = {"hooks": self.hooks_grad_sample, "ghost": self.ghost_transient}[mode]
        per_token = self.activations_per_token + self.logits_per_token
        return self.weights + self.trainable_state + tokens * per_token + per_sample

    def lines(self) -> list[str]:
        gb = 1e9
        return [
            f"device {self.device}: {self.free / gb:.2f} GB free",
            f"frozen base weights: {self.weights / gb:.2f} GB",
            f"trainable state (param, grads, Adam): {self.trainable_state / gb:.3f} GB",
            f"activations: {self.activations_per_token / 1e3:.1f} KB per token"
            + (" (reentrant checkpointing)" if self.checkpointing else ""),
            f"logits and loss: {self.logits_per_token / 1e3:.1f} KB per token",
            f"physical batch: {self.batch} x {self.seq_len} tokens"
            f" (train.physical_batch_tokens = {self.physical_batch_tokens or 'whole batch'})",
            f"per-sample gradients (hooks): {self.hooks_grad_sample / gb:.3f} GB; "
            f"ghost clipping transient: {self.ghost_transient / gb:.3f} GB",
            f"predicted peak, hooks: {self.peak('hooks') / gb:.2f} GB; ghost: "
            f"{self.peak('ghost') / gb:.2f} GB",
            f"grad-sample mode: {self.mode}",
        ]


def activation_bytes(s: ModelShape, *, checkpointing: bool) -> int:
    """Saved bytes per token over all layers (see the module docstring)."""
    d, e = s.hidden, s.element_bytes
    base = 2 * (4 * d + 4) + e * (2 * d + 2 * s.kv_width) + 4 * s.heads + 3 * e * s.ffn
    copies = 4 if e != 4 else 0  # peft copies the input to float32 only over a low precision
    lora = sum(copies * d_in + 4 * s.rank for d_in in s.adapted_inputs)
    per_layer_full = base + lora / max(s.layers, 1)
    if checkpointing:
        return int(s.layers * e * 2 * d + per_layer_full)
    return int(s.layers * per_layer_full)


def plan_memory(
    s: ModelShape,
    *,
    device: torch.device,
    seq_len: int,
    expected_batch: float,
    causal_lm: bool,
    mode: str = "auto",
    physical_batch_tokens: int | str = 0,
    checkpointing: bool = False,
    free: int | None = None,
) -> MemoryPlan:
    """The plan for one DP step; resolves ``auto`` mode and physical batch size."""
    free = free_bytes(device) if free is None else free
    act = activation_bytes(s, checkpointing=checkpointing)
    logits = 14 * s.vocab if causal_lm else 0
    state = 5 * s.trainable * 4
    batch_cap = max(1, math.ceil(expected_batch * 1.5))  # a Poisson batch rarely exceeds this

    def plan(batch: int, chosen: str, pbt: int) -> MemoryPlan:
        return MemoryPlan(
            device=str(device),
            free=free,
            weights=s.weight_bytes,
            trainable_state=state,
            activations_per_token=act,
            logits_per_token=logits,
            seq_len=seq_len,
            batch=batch,
            hooks_grad_sample=batch * s.trainable * 4,
            ghost_transient=3 * batch * seq_len**2 * 4,
            mode=chosen,
            physical_batch_tokens=pbt,
            checkpointing=checkpointing,
        )

    budget = HEADROOM * free
    if physical_batch_tokens == "auto":
        # the largest chunk (whole examples) whose hooks peak fits the budget
        per_example = seq_len * (act + logits) + s.trainable * 4
        room = budget - s.weight_bytes - state
        batch = int(max(1, min(batch_cap, room // max(per_example, 1))))
        pbt = batch * seq_len
    else:
        pbt = int(physical_batch_tokens)
        batch = batch_cap if pbt <= 0 else max(1, min(batch_cap, pbt // max(seq_len, 1)))
    first = plan(batch, "hooks", pbt)
    if mode == "auto":
        fits = first.peak("hooks") <= budget or first.peak("ghost") > budget
        mode = "hooks" if fits else "ghost"
    return plan(batch, mode, pbt)
