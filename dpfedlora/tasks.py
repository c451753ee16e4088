"""Tasks in a registry: per task its loss, tokenisation, predictions, metrics and model class.

Every ``model.task`` choice is made here, once; the rest of the toolkit asks ``TASKS[name]``.

* ``classification``: text -> class id; per-example cross-entropy; accuracy, balanced accuracy,
  macro-F1 and the majority baseline; a sequence-classification model with a trained head.
* ``causal_lm``: prompt + response; the loss is each example's mean over its response tokens
  (every example is one DP unit whatever its length; HF's built-in loss averages over all tokens
  of the batch instead); loss and perplexity, and with ``data.label_names`` the accuracy of the
  label word the model ranks first where the answer starts (constrained greedy generation).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import DataConfig, ModelConfig
from .data.rows import Rows, class_ids, column
from .data.tensors import TensorData
from .metrics import classification_metrics
from .models.loss_positions import reading

__all__ = [
    "Task",
    "TASKS",
    "register_task",
    "task_of",
    "label_word_log_probs",
    "forward_logits",
    "kept_positions",
]

Loss = Callable[[nn.Module, TensorData], torch.Tensor]


@dataclass(frozen=True)
class Task:
    name: str
    loss: Loss  # per-example losses, shape [B]; the training loss is their mean
    tokenize: Callable[[Rows, DataConfig, ModelConfig, Any], TensorData]
    synthetic: Callable[[torch.Tensor, torch.Tensor, np.ndarray], TensorData]
    columns: Callable[[DataConfig], list[tuple[str, str]]]  # (config key, column) it reads
    # (logits, batch, label token ids, log prior of the label words or None, keep=positions
    # the logits are of, None: all) -> predictions
    predict: Callable[..., torch.Tensor | None]
    metrics: Callable[[float, np.ndarray | None, TensorData, int, list[int] | None], dict]
    auto_class: str  # transformers Auto class for pretrained weights
    tiny_llama_class: str  # the class builtin:tiny-llama is built as
    has_head: bool  # a classification head (trained and sent with model.train_head)
    needs_decoder: bool  # an encoder-only architecture cannot train it
    labels_are_classes: bool  # batch.labels are class ids (input canaries need that)
    prefix_cacheable: bool  # the frozen-prefix cache supports its models
    # batch -> [B, T] positions whose logits each example's loss and predictions read (None:
    # the model's output has no sequence axis); evaluation computes only those
    eval_positions: Callable[[TensorData], torch.Tensor | None] = lambda batch: None

    def label_token_ids(
        self, tokenizer: Any, data: DataConfig, model: ModelConfig
    ) -> list[int] | None:
        """First answer token of each label word, for label-word accuracy (causal LM only)."""
        if self.has_head or not data.label_names or tokenizer is None:
            return None
        from .prompts import Encoder

        return Encoder(tokenizer, data, model).label_token_ids(data.label_names)


# ------------------------------------------------------------------------- classification
def _classification_loss(model: nn.Module, batch: TensorData) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    # float32 loss over a low-precision base (a no-op for float32 logits)
    return nn.functional.cross_entropy(logits.float(), batch.labels, reduction="none")


def _classification_tokenize(rows: Rows, cfg: DataConfig, model: ModelConfig, tok) -> TensorData:
    texts = [str(t) for t in column(rows, cfg.text_column, "text_column")]
    enc = tok(
        texts, padding="max_length", truncation=True, max_length=model.max_length,
        return_tensors="pt",
    )  # fmt: skip
    classes = class_ids(rows, cfg, model.num_labels)
    return TensorData(
        enc["input_ids"], enc["attention_mask"], torch.from_numpy(classes), None, classes
    )


def _classification_metrics(loss, pred, data, num_labels, label_token_ids) -> dict:
    return {"loss": loss, **classification_metrics(pred, data.labels.numpy(), num_labels)}


# ------------------------------------------------------------------------------ causal LM
def _read_mask(batch: TensorData) -> torch.Tensor:
    """[B, T]: the positions whose logits each example's loss reads, j where token j + 1 is
    a response token (the answer's first prediction is among them)."""
    read = torch.zeros(batch.labels.shape, dtype=torch.bool, device=batch.labels.device)
    read[:, :-1] = batch.labels[:, 1:] != -100
    return read


def kept_positions(read: torch.Tensor) -> torch.Tensor:
    """The sorted positions some example reads ([B, T] mask -> the union over the batch): what
    ``logits_to_keep`` sends through the LM head."""
    return read.any(0).nonzero().flatten()


def _causal_lm_loss(model: nn.Module, batch: TensorData) -> torch.Tensor:
    """Mean cross-entropy over each example's response tokens ([B], one DP unit each).

    Only the positions the loss reads go through the LM head (``logits_to_keep``): with a
    49,152-word vocabulary the head over every position costs more than the adapted layers,
    and the other positions' logits have no gradient anyway. A model that ignores the argument
    returns every position, which is indexed the same way."""
    read = _read_mask(batch)
    keep = kept_positions(read)
    logits = forward_logits(model, batch, keep, read)
    targets = batch.labels[:, keep + 1]
    mask = (targets != -100).float()
    tok = nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.clamp(min=0).reshape(-1),
        reduction="none",
    ).view_as(mask)
    return (tok * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def label_word_loss(model: nn.Module, batch: TensorData, *, ids: list[int]) -> torch.Tensor:
    """Cross-entropy over the label words' first tokens where the answer starts ([B]): the
    verbaliser objective (Schick and Schütze 2021). Only that one position goes through the
    head."""
    at = answer_positions(batch)
    keep = at.unique()  # sorted
    rows = torch.arange(len(batch), device=at.device)
    read = torch.zeros(batch.input_ids.shape, dtype=torch.bool, device=at.device)
    read[rows, at] = True  # each example's own answer position, not the batch's union
    with _label_rows_only(model, ids) as columns:
        logits = forward_logits(model, batch, keep, read)
    rows = rows.to(logits.device)
    log_probs = _renormalised(logits[rows, torch.searchsorted(keep, at)], columns)
    target = torch.as_tensor(batch.classes, device=log_probs.device, dtype=torch.long)
    return nn.functional.nll_loss(log_probs, target, reduction="none")


@contextlib.contextmanager
def _label_rows_only(model: nn.Module, ids: list[int]):
    """A label-word head for exactly ``ids`` (models.label_head) computes only their rows
    inside; yields where the label words' logits then are (else ``ids`` of the full head)."""
    head = next((m for m in model.modules() if hasattr(m, "rows_only")), None)
    if head is None or head.ids.tolist() != list(ids):
        yield list(ids)
        return
    head.rows_only = True
    try:
        yield list(range(len(ids)))
    finally:
        head.rows_only = False


CAUSAL_LM_LOSSES = ("response", "label_words")


def forward_logits(
    model: nn.Module, batch: TensorData, keep: torch.Tensor, read: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits at the sequence positions ``keep`` only ([B, len(keep), V]). ``read`` ([B, T],
    within ``keep``): the positions each example's loss reads; the last layer's position-wise
    work runs there only (:mod:`dpfedlora.models.loss_positions`), so the other logits at
    ``keep`` are not the model's and must not be read."""
    with reading(read):
        try:
            out = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                logits_to_keep=keep,
            )
        except TypeError as exc:  # a model without the argument: every position's logits
            if "logits_to_keep" not in str(exc):
                raise
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits = out.logits
    # every position came back (the fallback, or a caller handing in a finished forward)
    return logits[:, keep] if logits.shape[1] == batch.input_ids.shape[1] else logits


def _causal_lm_tokenize(rows: Rows, cfg: DataConfig, model: ModelConfig, tok) -> TensorData:
    """Prompt + response in the model's prompt format (:mod:`dpfedlora.prompts`), the loss on
    the response tokens only (labels -100 elsewhere). Long examples lose prompt text, never
    their answer."""
    from .prompts import Encoder

    enc = Encoder(tok, cfg, model)
    responses = [str(t) for t in column(rows, cfg.response_column, "response_column")]
    if cfg.prompt_template:
        texts = [str(t) for t in column(rows, cfg.text_column, "text_column")]
        prompts = [""] * len(texts)
    else:
        prompts = [str(t) for t in column(rows, cfg.prompt_column, "prompt_column")]
        texts = [None] * len(prompts)
    n = len(prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((n, model.max_length), pad, dtype=torch.long)
    mask = torch.zeros((n, model.max_length), dtype=torch.long)
    labels = torch.full((n, model.max_length), -100, dtype=torch.long)
    for i, (p, r, t) in enumerate(zip(prompts, responses, texts)):
        seq, start = enc.encode(p, r, t)
        L = len(seq)
        ids[i, :L] = torch.tensor(seq)
        mask[i, :L] = 1
        labels[i, start:L] = ids[i, start:L]
    classes = class_ids(rows, cfg, 10**9) if cfg.label_column in rows and cfg.label_names else None
    return TensorData(ids, mask, labels, None, classes)


def _causal_lm_synthetic(ids: torch.Tensor, mask: torch.Tensor, classes) -> TensorData:
    lm = ids.clone()
    lm[mask == 0] = -100
    return TensorData(ids, mask, lm, None, classes)


def answer_positions(batch: TensorData) -> torch.Tensor:
    """Per example, the position whose logits predict the answer's first token ([B])."""
    first = (batch.labels != -100).int().argmax(1)  # first response position
    return (first - 1).clamp(min=0)


def _renormalised(at: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """log p of the label words' first tokens, renormalised over the label words (float32)."""
    return at[:, ids].float().log_softmax(-1)


def label_word_log_probs(
    logits: torch.Tensor, batch: TensorData, ids: list[int], keep: torch.Tensor | None = None
) -> torch.Tensor:
    """log p of each label word's first token where the answer starts, renormalised over the
    label words ([B, len(ids)], float32). ``logits`` are of every position, or of the sorted
    positions ``keep`` (which hold the answer positions)."""
    at = answer_positions(batch).to(logits.device)
    if keep is not None:
        at = torch.searchsorted(keep.to(logits.device), at)
    return _renormalised(logits[torch.arange(len(batch), device=logits.device), at], ids)


def _label_word_predictions(
    logits, batch: TensorData, ids: list[int] | None, log_prior=None, keep=None
):
    """Class whose label word's first token is most likely where the answer starts (divided
    by the content-free prior when ``log_prior`` is given: :mod:`dpfedlora.calibration`)."""
    if not ids:
        return None
    scores = label_word_log_probs(logits, batch, ids, keep)
    if log_prior is not None:
        scores = scores - log_prior.to(scores.device)
    return scores.argmax(-1)


def _causal_lm_metrics(loss, pred, data, num_labels, label_token_ids) -> dict:
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    if pred is not None and data.classes is not None:
        words = classification_metrics(pred, data.classes, len(label_token_ids))
        out.update({f"label_word_{k}": v for k, v in words.items()})
    return out


# ------------------------------------------------------------------------------ registry
TASKS: dict[str, Task] = {}


def register_task(task: Task, *, force: bool = False) -> Task:
    if task.name in TASKS and not force:
        raise ValueError(f"task {task.name!r} is already registered. Pass force=True to replace.")
    TASKS[task.name] = task
    return task


register_task(
    Task(
        name="classification",
        loss=_classification_loss,
        tokenize=_classification_tokenize,
        synthetic=lambda ids, mask, classes: TensorData(
            ids, mask, torch.from_numpy(classes), None, classes
        ),
        columns=lambda d: [("text_column", d.text_column), ("label_column", d.label_column)],
        predict=lambda logits, batch, ids, log_prior=None, keep=None: logits.argmax(-1),
        metrics=_classification_metrics,
        auto_class="AutoModelForSequenceClassification",
        tiny_llama_class="LlamaForSequenceClassification",
        has_head=True,
        needs_decoder=False,
        labels_are_classes=True,
        prefix_cacheable=True,
    )
)
register_task(
    Task(
        name="causal_lm",
        loss=_causal_lm_loss,
        tokenize=_causal_lm_tokenize,
        synthetic=_causal_lm_synthetic,
        columns=lambda d: [
            ("text_column", d.text_column)
            if d.prompt_template
            else ("prompt_column", d.prompt_column),
            ("response_column", d.response_column),
        ],
        predict=_label_word_predictions,
        metrics=_causal_lm_metrics,
        auto_class="AutoModelForCausalLM",
        tiny_llama_class="LlamaForCausalLM",
        has_head=False,
        needs_decoder=True,
        labels_are_classes=False,
        prefix_cacheable=True,
        # the answer position is a loss position: a few positions per example, not all of
        # them through a 49k-word head
        eval_positions=_read_mask,
    )
)


def task_of(model: ModelConfig) -> Task:
    return TASKS[model.task]
