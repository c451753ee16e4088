"""Random-weight models shaped like public checkpoints, for benchmarks and tests without a hub.

Shapes come from the checkpoints' public ``config.json``: Llama-3.2-1B (1,235,814,400
parameters) and Llama-3.1-8B (8,030,261,248). A shape is built on the meta device (no memory),
then materialised directly in ``model.dtype`` on ``model.device`` and initialised there:
``to_empty`` leaves RoPE's ``inv_freq`` buffer uninitialised and unties the embedding from the
LM head, and ``init_weights`` restores both (gpu_path.md §3; a test checks RoPE against a model
built normally). ``builtin:llama-tiny-shape`` is the same path at test size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..tasks import TASKS
from .precision import torch_dtype

__all__ = ["SHAPES", "build_shape", "shape_config", "meta_model"]


def _llama3_rope(factor: float) -> dict[str, Any]:
    return {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


SHAPES: dict[str, dict[str, Any]] = {
    "builtin:llama-3.2-1b-shape": dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
        rope_parameters=_llama3_rope(32.0), max_position_embeddings=131072,
        rms_norm_eps=1e-5,
    ),
    "builtin:llama-3.1-8b-shape": dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
        rope_parameters=_llama3_rope(8.0), max_position_embeddings=131072,
        rms_norm_eps=1e-5,
    ),
    # the same construction at test size (the tests' stand-in for the large shapes)
    "builtin:llama-tiny-shape": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, vocab_size=512, tie_word_embeddings=True,
        rope_parameters=_llama3_rope(32.0), max_position_embeddings=1024,
        rms_norm_eps=1e-5,
    ),
}  # fmt: skip


def shape_config(cfg: ModelConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        **SHAPES[cfg.name],
        num_labels=cfg.num_labels,
        pad_token_id=0,
        attention_dropout=0.0 if cfg.dropout is None else cfg.dropout,
    )


def _model_class(cfg: ModelConfig):
    import transformers

    return getattr(transformers, TASKS[cfg.task].tiny_llama_class)


def meta_model(cfg: ModelConfig) -> nn.Module:
    """The shape on the meta device: every size and name, no storage (for memory plans)."""
    with torch.device("meta"):
        return _model_class(cfg)._from_config(shape_config(cfg), dtype=torch_dtype(cfg.dtype))


def build_shape(cfg: ModelConfig, device: torch.device) -> nn.Module:
    model = meta_model(cfg)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights()  # weights from the seeded generator; RoPE and tying restored
    return model
