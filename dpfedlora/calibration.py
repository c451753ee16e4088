"""Label-word calibration for causal-LM classification (``data.label_calibration``).

A fine-tuned LM can rank spam above ham on spam messages and below on ham ones, yet keep the
class prior in its raw scores, so argmax over the label words answers the majority class
everywhere (measured on SmolLM2: log p(" spam") of -3.5 to -7.5 on held-out spam, -7.3 to -9.9
on ham, log p(" ham") ≈ 0 on both). Contextual calibration (Zhao, Wallace, Feng, Klein, Singh
2021, "Calibrate before use") estimates that prior from *content-free* inputs, the prompt with
"N/A", "" and "[MASK]" in place of the text, and divides it out: the prediction is
argmax_c log p(c | x) − log p̄(c | content-free).

It reads no data (private or public), so it costs no privacy: a function of the released model
and of fixed strings. Registry: ``none`` (raw argmax) and ``content_free``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import DataConfig, ModelConfig
from .data.tensors import TensorData

__all__ = ["CALIBRATIONS", "register_calibration", "calibration_inputs", "label_log_prior"]

# Zhao et al.'s content-free strings
CONTENT_FREE = ("N/A", "", "[MASK]")

# name -> (tokenizer, data config, model config) -> the inputs whose answer-position scores
# estimate the prior, or None (no calibration)
CALIBRATIONS: dict[str, Callable[[Any, DataConfig, ModelConfig], TensorData | None]] = {}


def register_calibration(
    name: str, build: Callable[[Any, DataConfig, ModelConfig], TensorData | None]
) -> None:
    if name in CALIBRATIONS:
        raise ValueError(f"label calibration {name!r} is already registered.")
    CALIBRATIONS[name] = build


def _content_free(tok, data: DataConfig, model: ModelConfig) -> TensorData:
    from .prompts import Encoder

    enc = Encoder(tok, data, model)
    answer = data.label_names[0] if data.label_names else ""
    rows = [enc.encode(text, answer, text) for text in CONTENT_FREE]
    width = max(len(ids) for ids, _ in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (seq, start) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, start : len(seq)] = ids[i, start : len(seq)]  # marks where the answer starts
    return TensorData(ids, mask, labels)


register_calibration("none", lambda tok, data, model: None)
register_calibration("content_free", _content_free)


def calibration_inputs(tok, data: DataConfig, model: ModelConfig) -> TensorData | None:
    """The content-free inputs of ``data.label_calibration`` (None: no calibration)."""
    from .tasks import TASKS

    if TASKS[model.task].has_head or not data.label_names:  # label words: head-less tasks only
        return None
    return CALIBRATIONS[data.label_calibration](tok, data, model)


@torch.no_grad()
def label_log_prior(
    model: nn.Module, inputs: TensorData, label_token_ids: list[int]
) -> torch.Tensor:
    """log p̄(c): the label words' probabilities at the answer position, renormalised over the
    label words, averaged over the content-free inputs (as Zhao et al.)."""
    device = next(model.parameters()).device
    batch = inputs.to(device)
    from .tasks import label_word_log_probs

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    probs = label_word_log_probs(logits, batch, label_token_ids).exp().mean(0)
    return probs.log().cpu()
