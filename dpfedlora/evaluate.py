"""Evaluation metrics of the global model on held-out data."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .data import TensorData

__all__ = ["evaluate", "classification_metrics"]


def classification_metrics(pred: np.ndarray, true: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean per-class recall) and macro-F1, plus the majority
    baseline (the accuracy of always predicting the most frequent class)."""
    acc = float(np.mean(pred == true)) if len(true) else math.nan
    recalls, f1s = [], []
    for c in range(num_labels):
        tp = np.sum((pred == c) & (true == c))
        support = np.sum(true == c)
        predicted = np.sum(pred == c)
        if support:
            recalls.append(tp / support)
        prec = tp / predicted if predicted else 0.0
        rec = tp / support if support else 0.0
        if support or predicted:
            f1s.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
    majority = (
        float(np.max(np.bincount(true, minlength=num_labels)) / len(true)) if len(true) else 0
    )
    return {
        "accuracy": acc,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
        "macro_f1": float(np.mean(f1s)) if f1s else math.nan,
        "majority_baseline": majority,
    }


def _label_word_predictions(
    logits: torch.Tensor, batch: TensorData, ids: list[int]
) -> torch.Tensor:
    """Class whose label word's first token is most likely where the answer starts."""
    first = (batch.labels != -100).int().argmax(1)  # first response position
    at = logits[torch.arange(len(batch)), (first - 1).clamp(min=0)]
    return at[:, ids].argmax(-1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TensorData,
    *,
    task: str,
    num_labels: int,
    batch_size: int = 256,
    label_token_ids: list[int] | None = None,
) -> dict[str, float]:
    """Classification: loss, accuracy, balanced accuracy, macro-F1, majority baseline.
    Causal LM: loss and perplexity; with ``label_token_ids`` also the accuracy of the label word
    the model ranks first at the answer position (constrained greedy generation)."""
    from .client import LOSSES

    was_training = model.training
    model.eval()
    losses, preds = [], []
    # Batches of similar length waste little on padding; results are put back in data order.
    order = torch.argsort(data.attention_mask.sum(1), stable=True)
    for start in range(0, len(data), batch_size):
        batch = data.subset(order[start : start + batch_size]).trimmed()
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        # the loss functions call model(...).logits: hand them this forward's output
        losses.append(LOSSES[task](lambda _o=out, **_: _o, batch))
        if task == "classification":
            preds.append(out.logits.argmax(-1))
        elif label_token_ids:
            preds.append(_label_word_predictions(out.logits, batch, label_token_ids))
    model.train(was_training)
    loss = float(torch.cat(losses).mean()) if losses else math.nan  # a mean: order is irrelevant
    # predictions back in data order, to line up with the labels
    pred = torch.cat(preds)[torch.argsort(order)].numpy() if preds else None
    out = {"loss": loss}
    if task == "classification":
        out.update(classification_metrics(pred, data.labels.numpy(), num_labels))
    else:
        out["perplexity"] = math.exp(min(loss, 50.0))
        if pred is not None and data.classes is not None:
            words = classification_metrics(pred, data.classes, len(label_token_ids))
            out.update({f"label_word_{k}": v for k, v in words.items()})
    return out
