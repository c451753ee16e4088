"""A sample with a non-finite per-sample gradient contributes zero; the step never fails on it.

A NaN clipped sum would make the client fail, and a server that crafts weights so that only one
record's gradient overflows would learn from success or failure whether that record was
sampled. So the step must complete with a finite update equal to the one computed without that
record (the same noise draws, from one seeded source), and count the sample locally.

Equality with the record removed is checked to float32 summation-order rounding (rtol 1e-6,
atol 1e-7): the clipped sum adds the other rows in an order that can change when a zero row is
present; every quantity compared is of order C / B = 1e-1 or the noise σC / B, so a real defect
(the row half-kept, or noise redrawn) is orders of magnitude larger.
"""

from __future__ import annotations

import math

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from dpfedlora.client.dp_optimizer import FusedDPOptimizer, SourcedDPOptimizer
from dpfedlora.noise import SecureNoise, SeededNoise
from tests.helpers import tiny_setup

BAD = 2  # the poisoned record


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _inputs(kind: str):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, generator=gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    # nan: every tensor's row for BAD is NaN. inf: tanh saturates, so the second layer's row
    # stays finite while the first layer's is 0·∞ = NaN; the row must still go from *both*.
    x[BAD, 0] = {"nan": math.nan, "inf": math.inf}[kind]
    return x, y


def _grad_samples(net: nn.Module, x, y) -> list[torch.Tensor]:
    gsm = GradSampleModule(net, batch_first=True, loss_reduction="mean")
    for p in net.parameters():
        p.grad, p.grad_sample = None, None
    nn.functional.cross_entropy(gsm(x), y).backward()
    out = [p.grad_sample.detach().clone() for p in net.parameters()]
    gsm._close()
    return out


def _dp_step(cls, net, grad_samples, chunks, source):
    """One DP step over ``chunks`` (row lists) with SGD(lr=1); returns (p.grad list, optimizer)."""
    params = list(net.parameters())
    opt = cls(
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=0.8,
        max_grad_norm=0.5,
        expected_batch_size=6.0,
        loss_reduction="mean",
        noise_source=source,
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
    start = [p.detach().clone() for p in params]
    opt.step()
    grads = [p.grad.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    return grads, opt


@pytest.mark.parametrize("cls", [FusedDPOptimizer, SourcedDPOptimizer])
@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("split", [False, True])
def test_nonfinite_row_contributes_zero(cls, kind, split):
    net = _tiny_net()
    x, y = _inputs(kind)
    samples = _grad_samples(net, x, y)
    assert not all(bool(torch.isfinite(g[BAD]).all()) for g in samples)  # the row is poisoned
    if kind == "inf":  # ... and only partly: the joint zeroing is what is tested
        assert any(bool(torch.isfinite(g[BAD]).all()) for g in samples)
    keep = [i for i in range(6) if i != BAD]
    clean = _grad_samples(net, x[keep], y[keep])
    chunks = [[0, 1, 2], [3, 4, 5]] if split else [list(range(6))]
    chunks_clean = [[0, 1], [2, 3, 4]] if split else [list(range(5))]

    grads, opt = _dp_step(cls, net, samples, chunks, SeededNoise(7, "nonfinite"))
    ref, ref_opt = _dp_step(cls, net, clean, chunks_clean, SeededNoise(7, "nonfinite"))

    assert all(bool(torch.isfinite(g).all()) for g in grads)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)
    assert opt.nonfinite_rows == 1 and ref_opt.nonfinite_rows == 0
    # the clip binds for some rows (C = 0.5), so this is DP-SGD and not a plain mean
    norms = torch.stack([g.reshape(5, -1).norm(dim=1) for g in clean]).norm(dim=0)
    assert float(norms.max()) > 0.5


@pytest.mark.parametrize("cls", [FusedDPOptimizer, SourcedDPOptimizer])
def test_counter_accumulates_and_secure_noise_stays_finite(cls):
    net = _tiny_net()
    x, y = _inputs("nan")
    x[4, 1] = math.inf
    samples = _grad_samples(net, x, y)
    source = SecureNoise()
    grads, opt = _dp_step(cls, net, samples, [list(range(6))], source)
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert opt.nonfinite_rows == 2
    # the optimizer's count is cumulative over its steps
    opt.zero_grad(set_to_none=True)
    for p, g in zip(net.parameters(), samples):
        p.grad_sample = g.clone()
    opt.step()
    assert opt.nonfinite_rows == 4


def _trainer_step(mode: str, rows: list[int], *, token: int | None):
    """One trainer step (the client's code path) on records ``rows`` of the tiny task; the
    embedding of ``token`` set to NaN, the server-crafted weight that poisons one record."""
    fed = tiny_setup(
        "method.name=fedit",
        "privacy.noise_multiplier=1.0",
        f"privacy.grad_sample_mode={mode}",
        "privacy.clip_norm=0.01",
        "train.optimizer=sgd",
        "train.lr=1.0",
    )
    engine = fed.trainer
    names = fed.method.trainable_names(1)
    for n, p in engine.params.items():
        p.requires_grad_(n in names)
    with torch.no_grad():
        for n in names:
            if "lora_B" in n:
                engine.params[n].normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
        if token is not None:
            emb = next(p for n, p in engine.params.items() if "word_embeddings" in n)
            emb[token] = math.nan
    engine._ensure_hooks(names)
    params = [engine.params[n] for n in names]
    opt = engine.dp_optimizer(
        torch.optim.SGD(params, lr=1.0), SeededNoise(0, "poison"), noise_multiplier=1.0
    )
    before = {n: engine.params[n].detach().clone() for n in names}
    batch = fed.clients[0].data.subset(torch.tensor(rows))
    loss = engine.step(opt, batch, params)
    return {n: engine.params[n].detach() - before[n] for n in names}, opt, loss


def _unique_token(record: int, rows: list[int]) -> int:
    data = tiny_setup().clients[0].data.subset(torch.tensor(rows))
    ids, mask = data.input_ids, data.attention_mask.bool()
    mine = set(ids[record][mask[record]].tolist())
    for j in range(len(rows)):
        if j != record:
            mine -= set(ids[j][mask[j]].tolist())
    assert mine, "the tiny data changed: pick another record"
    return min(mine)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_trainer_step_leaves_a_poisoned_record_out(mode):
    rows = list(range(6))
    token = _unique_token(BAD, rows)
    kept = [r for r in rows if r != BAD]
    delta, opt, loss = _trainer_step(mode, rows, token=token)
    ref, ref_opt, _ = _trainer_step(mode, kept, token=token)
    assert all(bool(torch.isfinite(d).all()) for d in delta.values())
    assert any(float(d.abs().sum()) > 0 for d in delta.values())
    for n in delta:
        torch.testing.assert_close(delta[n], ref[n], rtol=1e-6, atol=1e-7)
    assert opt.nonfinite_rows == 1 and ref_opt.nonfinite_rows == 0
    # the reported loss must not turn NaN either (it would be the same oracle)
    assert math.isfinite(loss)
