"""A trainable verbaliser head for causal LMs that answer in label words (``model.label_head``).

A sequence classifier trains its classification head with the adapters (``model.train_head``);
a causal LM answering "ham" or "spam" has no such head: its decision is the LM head's rows for
the label words' first tokens, tied to the input embeddings and shared with the whole
vocabulary. :class:`LabelWordHead` wraps the LM head and adds a trainable correction to exactly
those rows::

    logits[..., ids[k]] += delta(h)[..., k]      delta = nn.Linear(hidden, len(ids)), zero at start

So the model starts as the pretrained one, every other token's logit is untouched, and what
trains is ``len(ids) x (hidden + 1)`` numbers (1,154 for two words on SmolLM2). It is a head like
any other: trained every round, clipped and noised with the adapters (its parameters are in the
method's ``head``), averaged by the server. ``delta`` is an ``nn.Linear`` in float32, so
per-sample gradients take the same exact paths as the adapters' (hooks, ghost) and a
low-precision base computes it in float32.

Why it exists: measured on SmolLM2-135M (README), LoRA on the top layers learns the answer
format and the class prior long before it learns the decision; with this head the DP run learns
it. (A linear probe on the final hidden state at the answer position, a scratch measurement not
in the README, separated the classes well: the decision is one direction of that state.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from ..config import ConfigError

__all__ = ["LabelWordHead", "install_label_head", "with_label_head", "LABEL_HEAD"]

# the trainable module's name (peft's modules_to_save matches it by this suffix)
LABEL_HEAD = "lm_head.delta"


class LabelWordHead(nn.Module):
    """``base`` (the LM head) plus a zero-initialised linear correction of the rows ``ids``."""

    def __init__(self, base: nn.Module, ids: Sequence[int], hidden: int) -> None:
        super().__init__()
        if len(set(ids)) != len(ids):
            raise ValueError(f"label-word token ids must be distinct. Found {list(ids)}.")
        self.base = base
        # set by tasks.label_word_loss: return the label words' logits only ([..., len(ids)])
        self.rows_only = False
        weight = getattr(base, "weight", None)
        device = weight.device if weight is not None else None  # meta too (the planner)
        self.register_buffer("ids", torch.tensor(list(ids), dtype=torch.long), persistent=False)
        self.delta = nn.Linear(hidden, len(ids), bias=True, dtype=torch.float32, device=device)
        with torch.no_grad():
            self.delta.weight.zero_()
            self.delta.bias.zero_()

    # transformers reads and ties lm_head.weight; it is the base head's
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @weight.setter
    def weight(self, value: torch.Tensor) -> None:
        self.base.weight = value

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        correction = self.delta(hidden.to(torch.float32))
        ids = self.ids.to(hidden.device)
        if self.rows_only:
            # the label-word loss reads these columns only: the other rows of a 49k-word head
            # cost 25,000x the compute for nothing (same values: the same rows, the same sum)
            bias = None if self.base.bias is None else self.base.bias[ids]
            out = nn.functional.linear(hidden, self.base.weight[ids], bias)
            return out + correction.to(out.dtype)
        out = self.base(hidden)
        return out.index_add(-1, ids, correction.to(out.dtype))


def install_label_head(built, ids: Sequence[int] | None):
    """Wrap ``built.model``'s LM head; returns ``built`` with ``head`` naming the correction.

    ``ids`` are the label words' first tokens (the task's ``label_token_ids``); None when the
    task does not answer in words, which the config cannot use with a label head."""
    if ids is None:
        raise ConfigError(
            "`model.label_head` = true trains the LM head's rows for the label words, which "
            "needs a causal LM answering in words (model.task=causal_lm, data.label_names). "
            "A classifier trains its own head: use model.label_head=false."
        )
    model = built.model
    head = model.get_output_embeddings()
    if isinstance(head, LabelWordHead):  # idempotent: a rebuilt setup wraps once
        return replace(built, head=LABEL_HEAD)
    if head is None or not hasattr(head, "in_features"):
        raise ConfigError(
            f"`model.label_head` = true needs a model with a linear LM head; "
            f"{type(model).__name__} has {type(head).__name__}. Use model.label_head=false."
        )
    model.set_output_embeddings(LabelWordHead(head, ids, head.in_features))
    return replace(built, head=LABEL_HEAD)


def with_label_head(cfg, built):
    """``built`` with the label-word head installed when ``cfg.model.label_head``, else as it
    is (``cfg``: the Experiment; the label words come from its data and the tokenizer)."""
    if not cfg.model.label_head:
        return built
    from ..tasks import TASKS

    ids = TASKS[cfg.model.task].label_token_ids(built.tokenizer, cfg.data, cfg.model)
    return install_label_head(built, ids)
