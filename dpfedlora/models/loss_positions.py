"""The last decoder layer's position-wise work, only at the positions a loss reads.

A causal LM's losses here read the logits of a few positions per example (the position before
the answer, or before each response token), and ``logits_to_keep`` already limits the LM head to
them. Below the head, the *last* decoder layer's MLP and attention output projection are
position-wise, and their outputs at the other positions reach nothing that is read: only the
final norm and the head follow, and they are read at the kept positions. So while a loss names
its positions (:func:`reading`, a [B, T] mask: each example's own), those two modules run on the
named rows only and return zeros elsewhere. By SmolLM2's matrix shapes they are ~84 % of the
last layer's multiply-adds per position, forward and backward. Logits and gradients at the
read positions are the full computation's (a test compares them); logits elsewhere are not the
model's and nothing reads them.

Only frozen modules are patched: a trainable one needs its inputs' batch axis for per-sample
gradients. The patch replaces the instance's ``forward`` (names and state dict unchanged); with
no mask set the module computes every position, as before.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["install_loss_positions", "reading"]

# the [B, T] positions the running loss reads (None: every position)
_READ: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "dpfedlora_read_positions", default=None
)


@contextlib.contextmanager
def reading(mask: torch.Tensor | None) -> Iterator[None]:
    """Within: patched modules compute only where ``mask`` ([B, T] bool) is set."""
    token = _READ.set(mask)
    try:
        yield
    finally:
        _READ.reset(token)


def _only_read(forward: Callable[[torch.Tensor], torch.Tensor]):
    def patched(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mask = _READ.get()
        if mask is None or x.dim() != 3 or tuple(mask.shape) != tuple(x.shape[:2]) or args:
            return forward(x, *args, **kwargs)
        mask = mask.to(x.device)
        rows = forward(x[mask], **kwargs)  # [N, d_out]: only the read positions
        out = rows.new_zeros((*x.shape[:2], rows.shape[-1]))
        out[mask] = rows
        return out

    patched.__dpfedlora_read_only__ = True  # type: ignore[attr-defined]
    return patched


def _last_decoder_layer(model: nn.Module) -> nn.Module | None:
    """The last layer of a Llama-family decoder stack (``.layers`` beside ``.embed_tokens``)."""
    found = None
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if hasattr(module, "embed_tokens") and isinstance(layers, nn.ModuleList) and len(layers):
            found = layers[-1]
    return found


def _frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def install_loss_positions(model: nn.Module, trainable: set[str]) -> list[str]:
    """Patch the last decoder layer's MLP and attention output projection when no name in
    ``trainable`` (every tensor any round may train) lies inside them. Returns the patched
    modules' names."""
    layer = _last_decoder_layer(model)
    if layer is None:
        return []
    names = {id(m): n for n, m in model.named_modules()}
    patched = []
    attention = getattr(layer, "self_attn", None)
    for module in (getattr(layer, "mlp", None), getattr(attention, "o_proj", None)):
        if module is None or getattr(module.forward, "__dpfedlora_read_only__", False):
            continue
        name = names[id(module)]
        if any(t.startswith(f"{name}.") for t in trainable) or not _frozen(module):
            continue
        module.forward = _only_read(module.forward)
        patched.append(name)
    return patched
