"""The label-word head (``model.label_head``): it starts as the pretrained LM head, corrects
exactly the label words' rows, trains as every method's head under DP with exact per-sample
gradients, and is refused where it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpfedlora.client.linear_grads import LinearGradSampler, supported
from dpfedlora.config import ConfigError
from dpfedlora.models.label_head import LABEL_HEAD, LabelWordHead, install_label_head
from dpfedlora.tasks import Task, label_word_loss
from tests.helpers import tiny_cfg, tiny_setup

IDS = [7, 11]  # stand-ins for the label words' first tokens (the tiny model has no tokenizer)
CAUSAL = (
    "model.name=builtin:tiny-llama",
    "model.task=causal_lm",
    "data.label_names=[ham, spam]",
)


@pytest.fixture
def word_ids(monkeypatch):
    """The tiny causal LM answers in 'words' IDS (its synthetic data has no tokenizer)."""
    monkeypatch.setattr(Task, "label_token_ids", lambda self, tok, data, model: list(IDS))


def _base():
    from dpfedlora.models.builders import build_model

    return build_model(tiny_cfg(*CAUSAL).model, seed=0)


def test_starts_as_the_lm_head_and_corrects_only_the_label_rows():
    built = _base()
    model = built.model.eval()
    ids = torch.randint(
        0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(0)
    )
    before = model(input_ids=ids).logits
    wrapped = install_label_head(built, IDS)
    assert wrapped.head == LABEL_HEAD
    head = model.get_output_embeddings()
    assert isinstance(head, LabelWordHead)
    torch.testing.assert_close(model(input_ids=ids).logits, before, atol=0, rtol=0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        head.delta.weight.normal_(0, 1, generator=gen)
        head.delta.bias.normal_(0, 1, generator=gen)
    out = model(input_ids=ids, output_hidden_states=True)
    h = out.hidden_states[-1]  # after the final norm: what the LM head reads
    expected = before.clone()
    for k, t in enumerate(IDS):
        expected[..., t] += h @ head.delta.weight[k] + head.delta.bias[k]
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    others = [t for t in range(model.config.vocab_size) if t not in IDS]
    torch.testing.assert_close(out.logits[..., others], before[..., others], atol=0, rtol=0)
    install_label_head(wrapped, IDS)  # idempotent: wraps once
    assert not isinstance(model.get_output_embeddings().base, LabelWordHead)


@pytest.mark.parametrize(
    "method, round_idx", [("fedit", 1), ("ffa", 1), ("fedsb", 1), ("rolora", 2)]
)
def test_every_method_trains_the_label_head_with_exact_per_sample_grads(
    word_ids, method, round_idx
):
    fed = tiny_setup(*CAUSAL, "model.label_head=true", f"method.name={method}")
    model, m = fed.model, fed.method
    heads = [n for n in m.head if ".delta." in n]
    assert len(heads) == 2  # weight and bias of the correction
    for r in (1, 2, 3):
        assert set(heads) <= set(m.trainable_names(r))
    names = m.trainable_names(round_idx)
    params = dict(model.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in set(names))
    assert params[heads[0]].dtype == torch.float32
    assert supported(model)
    data = fed.clients[0].data.subset(range(6))
    data.classes = np.array([0, 1, 1, 0, 1, 0])
    batch = data.trimmed()
    sampler = LinearGradSampler(model, loss_reduction="mean")
    label_word_loss(sampler, batch, ids=IDS).mean().backward()
    sampler.remove_hooks()
    mine = {n: params[n].grad_sample.clone() for n in names}
    assert mine[heads[1]].abs().sum() > 0  # the bias learns from every example
    for i in range(6):  # the independent computation: one example at a time
        for p in params.values():
            p.grad = None
        label_word_loss(model, batch.subset([i]), ids=IDS).sum().backward()
        for n in names:
            torch.testing.assert_close(mine[n][i], params[n].grad, atol=1e-6, rtol=1e-5)


def test_a_private_run_moves_the_label_head_within_budget(word_ids, tmp_path):
    from dpfedlora.federation import run

    cfg = tiny_cfg(
        *CAUSAL, "model.label_head=true", "method.name=ffa", "train.causal_lm_loss=label_words"
    )
    summary = run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    assert summary["stopped_reason"] == "completed"
    assert 0 < summary["max_epsilon"] <= cfg.privacy.target_epsilon
    state = torch.load(tmp_path / "r" / "checkpoint" / "final_state.pt", weights_only=True)
    delta = [v for k, v in state.items() if ".delta." in k]
    assert len(delta) == 2 and all(v.abs().sum() > 0 for v in delta)


def test_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match=r"`model.label_head` = true .*data.label_names"):
        tiny_cfg("model.name=builtin:tiny-llama", "model.task=causal_lm", "model.label_head=true")
    with pytest.raises(ConfigError, match=r"model.train_head=true \(found False\)"):
        tiny_cfg(*CAUSAL, "model.label_head=true", "model.train_head=false")
    with pytest.raises(
        ConfigError, match="`model.label_head` must be true or false. Found 'maybe'"
    ):
        tiny_cfg(*CAUSAL, "model.label_head=maybe")
    # a classifier (no label words to answer with) is refused before anything is built
    with pytest.raises(ConfigError, match="needs a causal LM answering in words"):
        tiny_setup("data.label_names=[a, b]", "model.label_head=true")


def test_the_label_word_loss_reads_only_the_label_rows_with_the_same_value(word_ids):
    fed = tiny_setup(*CAUSAL, "model.label_head=true", "method.name=ffa")
    model = fed.model
    head = next(m for m in model.modules() if isinstance(m, LabelWordHead))
    with torch.no_grad():  # a non-zero correction, so the rows-only path must add it
        for n, p in model.named_parameters():
            if ".delta." in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    data = fed.clients[0].data.subset(range(5))
    data.classes = np.array([1, 0, 1, 1, 0])
    batch = data.trimmed()
    widths = []
    handle = head.register_forward_hook(lambda m, a, o: widths.append(o.shape[-1]))
    loss = label_word_loss(model, batch, ids=IDS)
    handle.remove()
    assert widths == [len(IDS)] and not head.rows_only  # only the label rows, flag restored
    # independent: every logit of the full vocabulary, the answer position, a 2-way softmax
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    first = (batch.labels != -100).int().argmax(1)
    at = logits[torch.arange(5), (first - 1).clamp(min=0)][:, IDS].float()
    ref = -at.log_softmax(-1)[torch.arange(5), torch.as_tensor(batch.classes)]
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-5)
