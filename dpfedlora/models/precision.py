"""Where tensors live and in which precision: the hybrid path.

* The frozen base model lives on ``model.device`` in ``model.dtype`` (or quantised). One base
  serves every client.
* What trains (LoRA factors, Fed-SB's R, heads) is float32, and so are its per-sample
  gradients, clipping and noise. peft keeps LoRA factors in float32 over a low-precision base
  (``autocast_adapter_dtype``) and casts their input up; :func:`float32_trainables` does the
  same for any other trained module (heads, full fine-tuning's weights, Fed-SB's R). There is
  no ``torch.autocast``: under autocast Opacus's per-sample gradients are bfloat16 and clipped
  norms reached 1.008·C (reference: gpu_path.md §1).
* Client states (what the server sends and receives) live on the host, pinned where CUDA is
  present so copies to the device are fast; they move to the device only for the client that
  trains (``Trainer.load`` copies in place, so Opacus's hooks stay attached).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError

__all__ = ["DTYPES", "resolve_device", "torch_dtype", "to_host", "float32_trainables"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when one is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"`model.device` = {name} but this torch has no CUDA device "
                f"(torch {torch.__version__}). Use auto or cpu, or install a CUDA build of "
                "torch (README: large models on a GPU)."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"`model.device` = {name} but only {torch.cuda.device_count()} CUDA device(s) "
                "are visible. Use cuda:0 or auto."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"`model.device` = {name} but MPS is not available. Use auto or cpu.")
    return device


def to_host(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host copy of ``t`` (in ``dtype`` if given) that shares nothing with it; pinned when
    CUDA is present (pinning without CUDA raises)."""
    out = t.detach().to("cpu", dtype=dtype or t.dtype, copy=True)
    if torch.cuda.is_available():
        out = out.pin_memory()
    return out


def _up(x):
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, tuple):
        return tuple(_up(v) for v in x)
    return x


def _to_float32(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return _up(args), {k: _up(v) for k, v in kwargs.items()}


def _cast_back(dtype: torch.dtype):
    def down(x):
        if torch.is_tensor(x):
            return x.to(dtype) if x.is_floating_point() else x
        if isinstance(x, tuple):
            return type(x)(down(v) for v in x) if not hasattr(x, "_fields") else x
        return x

    def hook(module: nn.Module, args: tuple, output):
        return down(output)

    return hook


def _block_of(name: str) -> str | None:
    """The enclosing transformer block (a ModuleList element, e.g. ``...layer.3``)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return None


def _is_final(owner: str, final: set[str]) -> bool:
    padded = f".{owner}."
    return any(f".{h}." in padded for h in final)


def float32_trainables(model: nn.Module, names: list[str], final: set[str] = frozenset()) -> int:
    """Make what owns a trainable tensor float32, so what is clipped, noised and sent is
    float32 over a low-precision base. Returns how many modules were converted.

    * Heads (``final``): the module is float32 and its input is cast up by a pre-hook (which
      runs before Opacus's forward hook captures it); the loss is taken in float32.
    * LoRA factors are float32 already (peft), and their input is cast up by peft.
    * A trained base weight (full fine-tuning): its whole transformer block becomes float32,
      inputs cast up on entry and outputs cast back to the base dtype on exit. The gradient
      reaching the trained Linear (Opacus's backprops) is then float32; a cast on the Linear's
      own output would make it low precision, and with it the per-sample norms."""
    base = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    owners = sorted({n.rsplit(".", 1)[0] for n in names})
    units: dict[str, bool] = {}  # module -> cast its output back
    for owner in owners:
        own = model.get_submodule(owner).parameters(recurse=False)
        if all(p.dtype == torch.float32 for p in own):
            continue
        block = None if _is_final(owner, final) else _block_of(owner)
        units[block or owner] = block is not None
    for name, cast_back in units.items():
        module = model.get_submodule(name)
        module.float()
        module.register_forward_pre_hook(_to_float32, with_kwargs=True)
        if cast_back and base != torch.float32:
            module.register_forward_hook(_cast_back(base))
    return len(units)
