"""Gradient checkpointing that Opacus's per-sample gradients survive.

Only *reentrant* checkpointing works: its first forward runs under no_grad (Opacus's capture
hook skips it) and the recompute is captured whole. Non-reentrant checkpointing re-fires the
forward hooks inside the backward and leaves 26 of 28 per-sample gradients unset (gpu_path.md
§2; the preflight refuses it). Reentrant checkpointing needs an input that requires grad, so the
embeddings' output is made to require it (no parameter of theirs trains).
"""

from __future__ import annotations

from torch import nn

from ..config import ConfigError

__all__ = ["enable_checkpointing"]


def _hf_model(model: nn.Module) -> nn.Module:
    inner = model
    while not hasattr(inner, "supports_gradient_checkpointing"):
        nxt = getattr(inner, "base_model", None) or getattr(inner, "model", None)
        if nxt is None or nxt is inner:
            raise ConfigError(
                f"`train.gradient_checkpointing` = true, but {type(model).__name__} does not "
                "support gradient checkpointing. Set it to false."
            )
        inner = nxt
    return inner


def enable_checkpointing(model: nn.Module) -> None:
    hf = _hf_model(model)
    if not getattr(hf, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"`train.gradient_checkpointing` = true, but {type(hf).__name__} does not support "
            "gradient checkpointing. Set it to false."
        )
    enable = getattr(hf, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers >= 5 (gradient_checkpointing_enable is its alias)
        enable(activation_checkpointing_kwargs={"use_reentrant": True})
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    hf.enable_input_require_grads()
