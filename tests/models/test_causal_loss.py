"""The causal-LM loss reads only the positions it needs (logits_to_keep), with the same value
and gradients as the loss over every position's logits."""

from __future__ import annotations

import torch
from torch import nn

from dpfedlora.tasks import TASKS
from tests.helpers import tiny_setup

CAUSAL = ("model.name=builtin:tiny-llama", "model.task=causal_lm", "model.train_head=false")


def _full_logits_loss(model: nn.Module, batch) -> torch.Tensor:
    """Independent reference: every position through the head, shift, masked mean per example."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits, targets = logits[:, :-1].float(), batch.labels[:, 1:]
    per_token = nn.functional.cross_entropy(
        logits.transpose(1, 2), targets.clamp(min=0), reduction="none"
    )
    mask = (targets != -100).float()
    return (per_token * mask).sum(1) / mask.sum(1)


def test_loss_on_kept_positions_equals_the_full_logits_loss_and_gradients():
    setup = tiny_setup(*CAUSAL, "method.name=ffa")
    model = setup.model
    batch = setup.clients[0].data.subset(range(6)).trimmed()
    # responses of different lengths at different places, as prompts + answers have
    labels = torch.full_like(batch.labels, -100)
    T = labels.shape[1]
    for i in range(6):
        end = T - 1 - i
        labels[i, end - 1 - i % 2 : end + 1] = batch.input_ids[i, end - 1 - i % 2 : end + 1]
    batch.labels = labels
    seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    names = list(setup.method.trainable_names(1))  # FFA's B factors
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)

    loss = TASKS["causal_lm"].loss(model, batch)
    grads = torch.autograd.grad(loss.sum(), [params[n] for n in names])
    ref = _full_logits_loss(model, batch)
    ref_grads = torch.autograd.grad(ref.sum(), [params[n] for n in names])
    handle.remove()

    kept = int((labels[:, 1:] != -100).any(0).sum())
    assert seen[0] == kept < T - 1  # the head saw only the union of response positions
    assert seen[1] == T
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
