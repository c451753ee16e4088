"""A quantised frozen base (QLoRA): bitsandbytes 4-bit NF4 or 8-bit layers under fp32 LoRA.

bitsandbytes is an optional extra (``pip install 'dpfedlora[gpu]'``). Opacus hooks only the
LoRA ``nn.Linear`` factors, never the quantised ``Params4bit``, and their per-sample gradients
equal a per-example loop exactly (gpu_path.md §5). Models built from a config (tiny models,
shapes) are quantised by saving their weights to a temporary folder and loading them back with
the quantisation config, the one path transformers quantises on.
"""

from __future__ import annotations

import tempfile
from typing import Any

from torch import nn

from ..config import ConfigError, ModelConfig
from .precision import resolve_device, torch_dtype

__all__ = ["quantization_kwargs", "requantized", "check_bitsandbytes"]


def check_bitsandbytes(cfg: ModelConfig) -> str:
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError(
            f"`model.quantization` = {cfg.quantization} needs bitsandbytes, which is not "
            "installed: pip install 'dpfedlora[gpu]' (or bitsandbytes), or use none."
        ) from None
    except Exception as exc:  # noqa: BLE001 - a broken install must say so, not crash later
        raise ConfigError(
            f"`model.quantization` = {cfg.quantization}: bitsandbytes fails to import "
            f"({type(exc).__name__}: {exc}). Use none, or reinstall bitsandbytes."
        ) from None
    return str(getattr(bitsandbytes, "__version__", "?"))


def quantization_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """``from_pretrained`` arguments for ``model.quantization`` (none: nothing)."""
    if cfg.quantization == "none":
        return {}
    check_bitsandbytes(cfg)
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "4bit":
        qc = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch_dtype(cfg.dtype),
            bnb_4bit_use_double_quant=True,
        )
    else:
        qc = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": qc, "device_map": {"": str(resolve_device(cfg.device))}}


def requantized(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """``model`` (built from a config) reloaded with its frozen layers quantised."""
    kwargs = quantization_kwargs(cfg)
    with tempfile.TemporaryDirectory(prefix="dpfedlora-quant-") as tmp:
        model.save_pretrained(tmp)
        out = type(model).from_pretrained(tmp, dtype=torch_dtype(cfg.dtype), **kwargs)
    return out
