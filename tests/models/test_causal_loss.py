"""The causal-LM loss reads only the positions it needs (logits_to_keep), with the same value
and gradients as the loss over every position's logits."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_label_word_loss_is_the_cross_entropy_over_the_label_words_at_the_answer():
    from dpfedlora.config import ConfigError, load_config
    from dpfedlora.tasks import label_word_loss

    setup = tiny_setup(*CAUSAL, "method.name=ffa")
    model = setup.model
    data = setup.clients[0].data.subset(range(5))
    data.classes = np.array([0, 1, 1, 0, 1])
    batch = data.trimmed()  # keeps the class ids (the loss's targets)
    labels = torch.full_like(batch.labels, -100)
    starts = [3, 5, 5, 8, 4]  # the answer's first token, per example
    for i, s in enumerate(starts):
        labels[i, s : s + 2] = batch.input_ids[i, s : s + 2]
    batch.labels = labels
    ids = [7, 11]
    classes = torch.as_tensor(batch.classes)
    params = dict(model.named_parameters())
    names = list(setup.method.trainable_names(1))
    for n in names:
        params[n].requires_grad_(True)

    loss = label_word_loss(model, batch, ids=ids)
    grads = torch.autograd.grad(loss.sum(), [params[n] for n in names])
    # independent: every logit, the position before each answer, a 2-way log-softmax
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    at = torch.stack([logits[i, s - 1, ids] for i, s in enumerate(starts)]).float()
    ref = -at.log_softmax(-1)[torch.arange(5), classes]
    ref_grads = torch.autograd.grad(ref.sum(), [params[n] for n in names])
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    # the objective needs label words
    import pytest

    with pytest.raises(ConfigError, match="train.causal_lm_loss"):
        load_config("configs/tiny.yaml", {"train": {"causal_lm_loss": "label_words"}})


def test_causal_lm_evaluation_batches_fit_the_logits_budget_with_the_same_metrics(monkeypatch):
    import dpfedlora.evaluate as ev

    setup = tiny_setup(*CAUSAL, "method.name=ffa")
    data = setup.eval_data.subset(range(40))
    whole = ev.evaluate(setup.model, data, task="causal_lm", num_labels=2)
    sizes = []
    forward = setup.model.forward
    monkeypatch.setattr(
        setup.model, "forward", lambda **kw: sizes.append(len(kw["input_ids"])) or forward(**kw)
    )
    per_example = data.input_ids.shape[1] * setup.model.config.vocab_size
    monkeypatch.setattr(ev, "EVAL_LOGITS_BUDGET", 7 * per_example)
    small = ev.evaluate(setup.model, data, task="causal_lm", num_labels=2)
    assert max(sizes) == 7 and sum(sizes) == 40  # 1 GiB of logits on SmolLM2: 68 examples
    assert small["loss"] == pytest.approx(whole["loss"], rel=1e-6)


def test_causal_lm_evaluation_reads_only_the_loss_positions_with_the_same_metrics():
    """Evaluation sends only the loss positions through the LM head; its loss and label-word
    predictions equal an independent computation from every position's logits."""
    import dpfedlora.evaluate as ev
    from dpfedlora.metrics import classification_metrics

    setup = tiny_setup(*CAUSAL, "method.name=ffa")
    model = setup.model
    data = setup.eval_data.subset(range(30))
    ids = [7, 11]  # two token ids as the label words (the synthetic data has classes)
    assert data.classes is not None
    labels = torch.full_like(data.labels, -100)
    for i in range(len(data)):  # 2-token answers starting at 10 to 14
        s = 10 + i % 5
        labels[i, s : s + 2] = data.input_ids[i, s : s + 2]
    data.labels = labels
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda m, a, o: seen.append(a[0].shape[1])
    )
    got = ev.evaluate(model, data, task="causal_lm", num_labels=2, label_token_ids=ids)
    handle.remove()
    assert max(seen) <= 6  # positions 9 to 14, not all 31
    with torch.no_grad():
        batch = data.trimmed()
        loss = _full_logits_loss(model, batch)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        first = (batch.labels != -100).int().argmax(1)
        at = logits[torch.arange(len(batch)), first - 1][:, ids]
        pred = at.argmax(-1).numpy()
    assert got["loss"] == pytest.approx(float(loss.mean()), rel=1e-5)
    ref = classification_metrics(pred, data.classes, 2)
    assert got["label_word_balanced_accuracy"] == pytest.approx(ref["balanced_accuracy"])
    assert got["label_word_accuracy"] == pytest.approx(ref["accuracy"])
