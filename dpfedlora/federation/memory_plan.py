"""``dpfedlora plan CONFIG``: predicted peak memory and the chosen modes, before any data is
touched and without materialising the model.

The model is built on the meta device (sizes and names, no storage; pretrained models from
their config alone), the method injects its adapters there, and :mod:`dpfedlora.models.memory`
turns the shapes into a plan for ``model.device``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..config import Experiment
from ..methods import make_method
from ..models.builders import (
    HEADS,
    MODEL_BUILDERS,
    PRETRAINED,
    BuiltModel,
    MeanPoolClassifier,
    detect_targets,
)
from ..models.label_head import install_label_head
from ..models.memory import MemoryPlan
from ..models.precision import resolve_device, torch_dtype
from ..models.prefix_cache import install_prefix_cache
from ..models.shapes import SHAPES, meta_model
from ..tasks import TASKS

__all__ = ["MemoryReport", "plan_config"]

# bytes per frozen Linear weight element once quantised (NF4 with double quantisation: 4 bits
# plus about 0.127 bits of scales; 8-bit: one byte plus a scale per row)
QUANTIZED_BYTES = {"4bit": 0.5 * 1.0625, "8bit": 1.0}


@dataclass
class MemoryReport:
    plan: MemoryPlan
    parameters: int
    trainable: int
    expected_batch: float
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        p = self.plan
        return {
            "device": p.device,
            "free_bytes": p.free,
            "parameters": self.parameters,
            "trainable": self.trainable,
            "weights_bytes": p.weights,
            "trainable_state_bytes": p.trainable_state,
            "activation_bytes_per_token": p.activations_per_token,
            "logit_bytes_per_token": p.logits_per_token,
            "physical_batch": p.batch,
            "physical_batch_tokens": p.physical_batch_tokens,
            "seq_len": p.seq_len,
            "expected_batch": self.expected_batch,
            "hooks_grad_sample_bytes": p.hooks_grad_sample,
            "ghost_transient_bytes": p.ghost_transient,
            "peak_hooks_bytes": p.peak("hooks"),
            "peak_ghost_bytes": p.peak("ghost"),
            "grad_sample_mode": p.mode,
            "gradient_checkpointing": p.checkpointing,
            "notes": self.notes,
        }


def _meta_model(cfg: Experiment) -> nn.Module:
    m = cfg.model
    if m.name in SHAPES:
        return meta_model(m)
    if m.name in MODEL_BUILDERS:
        with torch.device("meta"):
            return MODEL_BUILDERS[m.name](m)
    import transformers

    path = PRETRAINED[m.name]() if m.name in PRETRAINED else m.name
    conf = transformers.AutoConfig.from_pretrained(path)
    task = TASKS[m.task]
    with torch.device("meta"):
        if task.has_head and m.pooling == "mean":
            encoder = transformers.AutoModel.from_config(conf, dtype=torch_dtype(m.dtype))
            return MeanPoolClassifier(encoder, m.num_labels)
        if task.has_head:
            conf.num_labels = m.num_labels
        auto = getattr(transformers, task.auto_class)
        return auto.from_config(conf, dtype=torch_dtype(m.dtype))


def _expected_batch(cfg: Experiment, notes: list[str]) -> float:
    t, d = cfg.train, cfg.data
    if t.sampling_rate <= 0:
        return float(t.batch_size)
    if d.num_examples > 0:
        per_client = d.num_examples * (1 - d.eval_fraction) / d.num_clients
        return t.sampling_rate * per_client
    notes.append(
        "expected batch taken from train.batch_size: with train.sampling_rate and all examples "
        "it depends on the shard sizes, which the plan does not read"
    )
    return float(t.batch_size)


def plan_config(cfg: Experiment, *, free: int | None = None) -> MemoryReport:
    from ..client.trainer import plan_for

    notes: list[str] = []
    model = _meta_model(cfg)
    model_type = model.config.model_type
    targets, fifo = detect_targets(model_type, cfg.model.target_modules)
    task = TASKS[cfg.model.task]
    head = HEADS.get(model_type) if task.has_head else None
    if isinstance(model, MeanPoolClassifier):
        head = "classifier"
    built = BuiltModel(model, model_type, targets, fifo, head, 0, None, cfg.model.layers)
    if cfg.model.label_head:  # the same shapes as the real label words' rows
        built = install_label_head(built, range(len(cfg.data.label_names)))
    method = make_method(cfg.method, seed=cfg.seed)
    adapted = method.setup(built, train_head=cfg.model.train_head)
    trainable = method.trainable_union()
    if cfg.model.cache_frozen_prefix and task.prefix_cacheable:
        # as a run does: the layers below the lowest trainable one hold no activations
        if install_prefix_cache(adapted, set(trainable), 0):
            notes.append("frozen-prefix cache: its features (all examples) are not counted")
    device = resolve_device(cfg.model.device)
    expected = _expected_batch(cfg, notes)
    plan = plan_for(cfg, adapted, trainable, device, expected, free)
    if cfg.model.quantization != "none":
        wanted = set(trainable)
        linear = sum(
            mod.weight.numel()
            for name, mod in adapted.named_modules()
            if isinstance(mod, nn.Linear)
            and "lora_" not in name
            and f"{name}.weight" not in wanted
            and not name.endswith(("lm_head", "score", "classifier"))
        )
        saved = linear * (
            torch_dtype(cfg.model.dtype).itemsize - QUANTIZED_BYTES[cfg.model.quantization]
        )
        plan = replace(plan, weights=plan.weights - int(saved))
        notes.append(f"{cfg.model.quantization} layers estimated at their packed size")
    total = sum(p.numel() for p in adapted.parameters())
    trainable_n = sum(dict(adapted.named_parameters())[n].numel() for n in trainable)
    return MemoryReport(plan, total, trainable_n, expected, notes)
