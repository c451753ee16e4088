"""Per-sample gradients of ``nn.Linear`` layers by tensor hooks: the lean ``hooks`` path.

Every trainable tensor of the LoRA-family methods here lives in an ``nn.Linear``: peft's LoRA
factors, Fed-SB's R, the classification head. For a Linear with input a (B, T, d_in) and output
gradient g (B, T, d_out), example b's weight gradient is g_b^T a_b and its bias gradient Σ_t g_b,
the same formula as Opacus's Linear sampler. Opacus reaches it through module *full* backward
hooks, which wrap every hooked module's inputs and outputs in autograd functions on each forward;
on a model whose plain step costs about 2 ms that wrapping was the largest part of DP's overhead.
Here a forward hook keeps the input and puts one tensor hook on the output, which receives g.

Results land in ``p.grad_sample`` exactly as Opacus's ``GradSampleModule`` leaves them (scaled
by the chunk size for a mean-reduced loss), so Opacus's DP optimizers clip, noise and step them
unchanged. Models with any other trainable module (LayerNorm, embeddings, ParameterDict
adapters) keep Opacus's ``GradSampleModule``: :func:`supported` decides, once per trainable set.
Tests compare both samplers' per-sample gradients on the same batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LinearGradSampler", "supported"]


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def supported(model: nn.Module) -> bool:
    """Whether every tensor that trains now belongs to an ``nn.Linear``."""
    found = False
    for module in model.modules():
        if _trainable(module):
            if type(module) is not nn.Linear:  # subclasses may change forward's maths
                return False
            found = True
    return found


class LinearGradSampler(nn.Module):
    """Wraps ``model``; while it runs, trainable Linears record per-sample gradients.

    Behaves like the model (calls and attribute reads pass through), as Opacus's wrapper does,
    so the trainer's loss functions take either."""

    def __init__(self, model: nn.Module, *, loss_reduction: str = "mean") -> None:
        super().__init__()
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"`loss_reduction` must be mean or sum. Found {loss_reduction!r}.")
        self._module = model
        self._mean = loss_reduction == "mean"
        self._handles = [
            m.register_forward_hook(self._capture)
            for m in model.modules()
            if type(m) is nn.Linear and _trainable(m)
        ]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["_module"], name)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _capture(self, module: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and output.requires_grad):
            return
        activations = inputs[0].detach()
        mean = self._mean

        def on_grad(grad: torch.Tensor) -> None:
            n = grad.shape[0]
            g = grad.reshape(n, -1, grad.shape[-1])
            if mean:  # the loss was a mean over the chunk: per-example gradients are n x this
                g = g * n
            if module.weight.requires_grad:
                a = activations.reshape(n, -1, activations.shape[-1])
                if a.dtype != g.dtype:
                    a = a.to(g.dtype)
                _accumulate(module.weight, torch.bmm(g.transpose(1, 2), a))
            if module.bias is not None and module.bias.requires_grad:
                _accumulate(module.bias, g.sum(dim=1))

        output.register_hook(on_grad)


def _accumulate(param: nn.Parameter, per_sample: torch.Tensor) -> None:
    if per_sample.dtype != param.dtype:
        per_sample = per_sample.to(param.dtype)
    existing = getattr(param, "grad_sample", None)
    # a module used twice in one forward adds both uses, as Opacus does
    param.grad_sample = per_sample if existing is None else existing + per_sample
