"""The last decoder layer runs its MLP and output projection only where a loss reads: the read
logits, the losses and the per-sample gradients equal the full computation's."""

from __future__ import annotations

import numpy as np
import torch

from dpfedlora.client.linear_grads import LinearGradSampler
from dpfedlora.models.loss_positions import install_loss_positions, reading
from dpfedlora.tasks import TASKS, label_word_loss
from tests.helpers import tiny_setup

CAUSAL = ("model.name=builtin:tiny-llama", "model.task=causal_lm", "model.train_head=false")


def _answers(setup, n: int = 6):
    data = setup.clients[0].data.subset(range(n))
    data.classes = np.arange(n) % 2
    batch = data.trimmed()
    labels = torch.full_like(batch.labels, -100)
    for i in range(n):  # 2-token answers at different places
        s = 4 + 2 * i
        labels[i, s : s + 2] = batch.input_ids[i, s : s + 2]
    batch.labels = labels
    return batch


def _last_layer(model):
    return [m for m in model.modules() if hasattr(m, "embed_tokens")][-1].layers[-1]


def test_the_frozen_mlp_and_output_projection_of_the_last_layer_are_patched():
    setup = tiny_setup(*CAUSAL, "method.name=ffa")
    layer = _last_layer(setup.model)
    for module in (layer.mlp, layer.self_attn.o_proj):
        assert getattr(module.forward, "__dpfedlora_read_only__", False)
    for module in (layer.self_attn.q_proj, _last_layer_minus_one(setup.model).mlp):
        assert not getattr(module.forward, "__dpfedlora_read_only__", False)
    # idempotent, and a module holding a trainable tensor is left alone
    assert install_loss_positions(setup.model, set()) == []
    trained = tiny_setup(*CAUSAL, "method.name=ffa", "model.target_modules=[q_proj, o_proj]")
    assert not getattr(
        _last_layer(trained.model).self_attn.o_proj.forward, "__dpfedlora_read_only__", False
    )
    assert getattr(_last_layer(trained.model).mlp.forward, "__dpfedlora_read_only__", False)


def _last_layer_minus_one(model):
    return [m for m in model.modules() if hasattr(m, "embed_tokens")][-1].layers[-2]


def test_read_positions_get_the_full_computation_and_the_mlp_sees_only_them():
    setup = tiny_setup(*CAUSAL, "method.name=ffa")
    model, batch = setup.model, _answers(setup)
    read = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    read[:, :-1] = batch.labels[:, 1:] != -100
    rows = []
    handle = _last_layer(model).mlp.gate_proj.register_forward_hook(
        lambda m, a, o: rows.append(a[0].shape)
    )
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with reading(read):
            part = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    handle.remove()
    assert rows[0][:2] == batch.input_ids.shape and rows[1] == (int(read.sum()), rows[0][-1])
    torch.testing.assert_close(part[read], full[read], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(part[~read], full[~read])  # elsewhere: not the model's logits


def _per_sample(setup, loss_fn, batch):
    """Per-sample gradients of the trainable tensors through our tensor hooks."""
    names = list(setup.method.trainable_names(1))
    params = dict(setup.model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    wrapped = LinearGradSampler(setup.model, loss_reduction="sum")
    loss_fn(wrapped, batch).sum().backward()
    out = {n: params[n].grad_sample.clone() for n in names}
    for n in names:
        params[n].grad_sample = None
        params[n].grad = None
    wrapped.remove_hooks()
    return out


def _unpatched(setup):
    layer = _last_layer(setup.model)
    for module in (layer.mlp, layer.self_attn.o_proj):
        del module.forward  # back to the class's forward


def test_losses_and_per_sample_gradients_equal_the_full_computation():
    for loss_name in ("response", "label_words"):
        got, ref = [], []
        for patched in (True, False):
            setup = tiny_setup(*CAUSAL, "method.name=ffa")
            if not patched:
                _unpatched(setup)
            batch = _answers(setup)
            if loss_name == "response":
                fn = TASKS["causal_lm"].loss
            else:

                def fn(m, b):
                    return label_word_loss(m, b, ids=[7, 11])

            with torch.no_grad():
                (got if patched else ref).append(fn(setup.model, batch))
            (got if patched else ref).append(_per_sample(setup, fn, batch))
        torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
        assert got[1].keys() == ref[1].keys() and got[1]
        for n in got[1]:
            torch.testing.assert_close(got[1][n], ref[1][n], atol=1e-5, rtol=1e-4)
