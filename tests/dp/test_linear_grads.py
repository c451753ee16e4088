"""Our tensor-hook per-sample gradients for nn.Linear and the fused DP step, against Opacus.

The lean path (dpfedlora.client.linear_grads, FusedDPOptimizer) replaces Opacus's module hooks
and its step bookkeeping for speed only: the per-sample gradients must equal those of Opacus's
GradSampleModule and a per-example loop, and the update must equal Opacus's DPOptimizer's with
the same noise draws, including accumulation over physical chunks and the empty batch.
"""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from dpfedlora.client.dp_optimizer import FusedDPOptimizer, SourcedDPOptimizer
from dpfedlora.client.linear_grads import LinearGradSampler, supported
from dpfedlora.noise import SeededNoise
from dpfedlora.tasks import TASKS
from tests.helpers import tiny_setup

METHODS = [("fedit", 1), ("ffa", 1), ("fedsb", 1), ("rolora", 2)]


def _prepared(method: str, round_idx: int):
    fed = tiny_setup(f"method.name={method}", "model.train_head=true")
    model, m = fed.model, fed.method
    names = m.trainable_names(round_idx)
    params = dict(model.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in set(names))
    with torch.no_grad():  # non-zero B so every factor's gradient is non-trivial
        gen = torch.Generator().manual_seed(1)
        for n, p in params.items():
            if "lora_B" in n or "latent" in n:
                p.normal_(0, 0.1, generator=gen)
    model.train()
    return fed, model, [params[n] for n in names], names


def _grad_samples(wrapped, model, batch, params):
    for p in params:
        p.grad, p.grad_sample = None, None
    TASKS["classification"].loss(wrapped, batch).mean().backward()
    return [p.grad_sample.clone() for p in params]


@pytest.mark.parametrize("method, round_idx", METHODS)
def test_per_sample_grads_equal_opacus(method, round_idx):
    fed, model, params, names = _prepared(method, round_idx)
    assert supported(model)
    batch = fed.clients[0].data.subset(torch.arange(7))
    ours = LinearGradSampler(model, loss_reduction="mean")
    mine = _grad_samples(ours, model, batch, params)
    ours.remove_hooks()
    opacus = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    theirs = _grad_samples(opacus, model, batch, params)
    opacus.remove_hooks()
    for n, a, b in zip(names, mine, theirs):
        assert a.shape == (7, *dict(model.named_parameters())[n].shape)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # and against a per-example loop (the independent computation)
    for i in range(7):
        for p in params:
            p.grad = None
        TASKS["classification"].loss(model, batch.subset([i])).sum().backward()
        for p, a in zip(params, mine):
            torch.testing.assert_close(a[i], p.grad, atol=1e-6, rtol=1e-5)


def test_removed_hooks_record_nothing_and_attributes_pass_through():
    fed, model, params, _ = _prepared("ffa", 1)
    ours = LinearGradSampler(model)
    assert ours.config is model.config  # attribute reads reach the model, as Opacus's wrapper
    ours.remove_hooks()
    for p in params:
        p.grad_sample = None
    TASKS["classification"].loss(ours, fed.clients[0].data.subset(torch.arange(3))).sum().backward()
    assert all(p.grad_sample is None for p in params)


def test_unsupported_trainable_modules_keep_opacus():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert not supported(model)  # the LayerNorm trains
    model[1].requires_grad_(False)
    assert supported(model)
    for p in model.parameters():
        p.requires_grad_(False)
    assert not supported(model)  # nothing trains


def _step(cls, params, grad_samples, chunks, seed):
    """One DP step over ``chunks`` (index lists into the per-sample rows); returns new params."""
    with torch.no_grad():
        start = [p.detach().clone() for p in params]
    opt = cls(
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=1.3,
        max_grad_norm=0.05,
        expected_batch_size=5.0,
        loss_reduction="mean",
        noise_source=SeededNoise(seed, "fused-test"),
    )
    opt.zero_grad(set_to_none=True)
    for i, rows in enumerate(chunks):
        for p, g in zip(params, grad_samples):
            p.grad_sample = g[rows].clone()
            p.grad = torch.zeros_like(p)
        if i < len(chunks) - 1:
            opt.signal_skip_step(do_skip=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
    opt.step()
    with torch.no_grad():
        out = [p.detach().clone() for p in params]
        for p, s in zip(params, start):
            p.copy_(s)
    return out


@pytest.mark.parametrize("chunks", [[[0, 1, 2, 3, 4, 5]], [[0, 1], [2, 3, 4], [5]], [[]]])
def test_fused_step_equals_opacus_step(chunks):
    fed, model, params, _ = _prepared("fedit", 1)
    batch = fed.clients[0].data.subset(torch.arange(6))
    ours = LinearGradSampler(model)
    grad_samples = _grad_samples(ours, model, batch, params)
    ours.remove_hooks()
    fused = _step(FusedDPOptimizer, params, grad_samples, chunks, seed=3)
    reference = _step(SourcedDPOptimizer, params, grad_samples, chunks, seed=3)
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    # the clip binds (C = 0.05 is below these per-sample norms), so this is not a plain mean
    norms = torch.stack([g.reshape(6, -1).norm(dim=1) for g in grad_samples]).norm(dim=0)
    assert float(norms.min()) > 0.05
