"""Scoring a model on held-out data with its task's loss, predictions and metrics."""

from __future__ import annotations

import math

import torch
from torch import nn

from .data.tensors import TensorData
from .tasks import TASKS, forward_logits, kept_positions

__all__ = ["evaluate", "predict_logits"]


# logits one evaluation batch of a causal LM may hold (float32: 1 GiB)
EVAL_LOGITS_BUDGET = 2**28


class _Kept:
    """A forward's output holding the logits of the kept positions only."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TensorData,
    *,
    task: str,
    num_labels: int,
    batch_size: int = 256,
    label_token_ids: list[int] | None = None,
    calibration: TensorData | None = None,
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``data`` (see :mod:`dpfedlora.tasks`); label words
    are calibrated on ``calibration``'s content-free inputs when given."""
    spec = TASKS[task]
    was_training = model.training
    model.eval()
    log_prior = None
    if calibration is not None and label_token_ids:
        from .calibration import label_log_prior

        log_prior = label_log_prior(model, calibration, label_token_ids)
    losses, preds = [], []
    if spec.needs_decoder:  # B x T x vocab logits: SmolLM2's 49k words at B 256 are 4 GB
        per_example = data.input_ids.shape[1] * int(getattr(model.config, "vocab_size", 1))
        batch_size = max(1, min(batch_size, EVAL_LOGITS_BUDGET // max(per_example, 1)))
    # Batches of similar length waste little on padding; results are put back in data order.
    order = torch.argsort(data.attention_mask.sum(1), stable=True)
    device = _device(model)
    for start in range(0, len(data), batch_size):
        batch = data.subset(order[start : start + batch_size]).trimmed().to(device)
        read = spec.eval_positions(batch)
        keep = None
        if read is None or not bool(read.any()):  # (no response token: every position)
            read = None
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        else:  # the logits of the positions the loss and predictions read
            keep = kept_positions(read)
            out = _Kept(forward_logits(model, batch, keep, read))
        # the loss functions call model(...).logits: hand them this forward's output (the
        # causal loss asks for the same positions, so it takes the logits as they are)
        losses.append(spec.loss(lambda _o=out, **_: _o, batch).float().cpu())
        pred = spec.predict(out.logits, batch, label_token_ids, log_prior=log_prior, keep=keep)
        if pred is not None:
            preds.append(pred.cpu())
    model.train(was_training)
    loss = float(torch.cat(losses).mean()) if losses else math.nan  # a mean: order is irrelevant
    # predictions back in data order, to line up with the labels
    pred = torch.cat(preds)[torch.argsort(order)].numpy() if preds else None
    return spec.metrics(loss, pred, data, num_labels, label_token_ids)


@torch.no_grad()
def predict_logits(model: nn.Module, data: TensorData, *, batch_size: int = 256) -> torch.Tensor:
    """Logits of every example in data order, padded positions included (export checks)."""
    was_training = model.training
    model.eval()
    device = _device(model)
    out = [
        model(
            input_ids=data.input_ids[i : i + batch_size].to(device),
            attention_mask=data.attention_mask[i : i + batch_size].to(device),
        )
        .logits.float()
        .cpu()
        for i in range(0, len(data), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out)
