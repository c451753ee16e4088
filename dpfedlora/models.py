"""Model construction: built-in tiny models from configs (offline, random weights) and any
Hugging Face id or local path, with target-module detection per architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigError, ModelConfig

__all__ = ["BuiltModel", "build_model", "MODEL_BUILDERS", "register_model", "detect_targets"]

# model_type -> (LoRA target modules, fan_in_fan_out). GPT-2 stores Conv1D weights as (in, out).
TARGETS: dict[str, tuple[tuple[str, ...], bool]] = {
    "bert": (("query", "value"), False),
    "roberta": (("query", "value"), False),
    "llama": (("q_proj", "v_proj"), False),
    "mistral": (("q_proj", "v_proj"), False),
    "gpt2": (("c_attn",), True),
}
# classification head module name per model_type (trained and sent when model.train_head)
HEADS: dict[str, str] = {
    "bert": "classifier",
    "roberta": "classifier",
    "llama": "score",
    "mistral": "score",
    "gpt2": "score",
}
VOCAB = 128  # tiny models' vocabulary; the synthetic task draws from it


@dataclass
class BuiltModel:
    model: nn.Module
    model_type: str
    target_modules: tuple[str, ...]
    fan_in_fan_out: bool
    head: str | None
    pad_token_id: int
    tokenizer: object | None = None


def detect_targets(model_type: str, configured: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
    known = TARGETS.get(model_type)
    if configured:
        return tuple(configured), (known[1] if known else False)
    if known is None:
        raise ConfigError(
            f"cannot detect LoRA target modules for model_type {model_type!r}. "
            f"Known: {', '.join(sorted(TARGETS))}. Set `model.target_modules`."
        )
    return known


def _tiny_bert(cfg: ModelConfig) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    conf = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max(64, cfg.max_length),
        num_labels=cfg.num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return BertForSequenceClassification(conf)


def _tiny_llama(cfg: ModelConfig) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    conf = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=max(64, cfg.max_length),
        num_labels=cfg.num_labels,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    cls = LlamaForCausalLM if cfg.task == "causal_lm" else LlamaForSequenceClassification
    return cls(conf)


MODEL_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "builtin:tiny-bert": _tiny_bert,
    "builtin:tiny-llama": _tiny_llama,
}


def register_model(name: str, builder: Callable[[ModelConfig], nn.Module]) -> None:
    if name in MODEL_BUILDERS:
        raise ValueError(f"model {name!r} is already registered.")
    MODEL_BUILDERS[name] = builder


def _from_hub(cfg: ModelConfig) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if cfg.task == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(cfg.name, dtype=torch.float32)
    return AutoModelForSequenceClassification.from_pretrained(cfg.name, num_labels=cfg.num_labels)


def build_model(cfg: ModelConfig, *, seed: int) -> BuiltModel:
    """Build the shared base model, in training mode, on its device (before any adapter)."""
    if cfg.task not in ("classification", "causal_lm"):
        raise ConfigError(f"`model.task` must be classification or causal_lm. Found {cfg.task!r}.")
    torch.manual_seed(seed)  # weight init of config-built models; never used for DP noise
    builder = MODEL_BUILDERS.get(
        cfg.name, _from_hub if not cfg.name.startswith("builtin:") else None
    )
    if builder is None:
        raise ConfigError(
            f"unknown built-in model {cfg.name!r}. Built-ins: {', '.join(sorted(MODEL_BUILDERS))}."
        )
    model = builder(cfg)
    model_type = model.config.model_type
    targets, fifo = detect_targets(model_type, cfg.target_modules)
    head = HEADS.get(model_type) if cfg.task == "classification" else None
    # Device placement happens before adapters are injected (opacus#820: otherwise the LoRA
    # weights silently never update).
    model.to(cfg.device)
    model.train()  # from_pretrained returns eval mode, which Opacus rejects
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    return BuiltModel(model, model_type, targets, fifo, head, int(pad))
