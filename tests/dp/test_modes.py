"""Ghost clipping and physical batches equal the plain hooks step; GaLore really projects."""

from __future__ import annotations

import pytest
import torch

from dpfedlora.methods.galore import GaLoreAdamW
from dpfedlora.noise import SeededNoise
from tests.helpers import tiny_setup


def _one_step(tmp_path, mode, *extra, private=True):
    fed = tiny_setup(
        "method.name=fedit",
        *extra,
        "privacy.noise_multiplier=1.0",
        f"privacy.grad_sample_mode={mode}",
        f"privacy.mode={'sample' if private else 'none'}",
        "privacy.clip_norm=0.01",  # every sample is clipped, so clipping must match exactly
        "train.optimizer=sgd",
        "train.lr=1.0",
    )
    engine = fed.trainer
    names = fed.method.trainable_names(1)
    for n, p in engine.params.items():
        p.requires_grad_(n in names)
    with torch.no_grad():  # non-zero B so both factors get gradients
        for n in names:
            if "lora_B" in n:
                engine.params[n].normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    engine._ensure_hooks(names)
    params = [engine.params[n] for n in names]
    opt = torch.optim.SGD(params, lr=1.0)
    if private:
        opt = engine.dp_optimizer(opt, SeededNoise(0, "test"), noise_multiplier=0.0)
    before = {n: engine.params[n].detach().clone() for n in names}
    engine.step(opt, fed.clients[0].data.subset(torch.arange(12)), params)
    return {n: engine.params[n].detach() - before[n] for n in names}


def test_ghost_equals_hooks_without_noise(tmp_path):
    hooks, ghost = _one_step(tmp_path, "hooks"), _one_step(tmp_path, "ghost")
    assert any(float(v.abs().sum()) > 0 for v in hooks.values())
    for n in hooks:
        torch.testing.assert_close(ghost[n], hooks[n], atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("private", [True, False])
def test_physical_batches_equal_one_batch(tmp_path, private):
    fed = tiny_setup()
    batch = fed.clients[0].data.subset(torch.arange(12))
    chunks = batch.physical_batches(40)
    assert len(chunks) >= 3 and sum(len(c) for c in chunks) == 12
    assert all(len(c) * c.input_ids.shape[1] <= 40 or len(c) == 1 for c in chunks)
    whole = _one_step(tmp_path, "hooks", private=private)
    split = _one_step(tmp_path, "hooks", "train.physical_batch_tokens=40", private=private)
    assert any(float(v.abs().sum()) > 0 for v in whole.values())
    for n in whole:
        torch.testing.assert_close(split[n], whole[n], atol=1e-7, rtol=1e-5)


def test_galore_projects_and_keeps_low_rank_state():
    w = torch.nn.Parameter(torch.randn(16, 32))
    v = torch.nn.Parameter(torch.randn(5))
    opt = GaLoreAdamW([w, v], lr=0.1, rank=3, update_proj_gap=2)
    for _ in range(3):
        w.grad, v.grad = torch.randn(16, 32), torch.randn(5)
        opt.step()
    state = opt.state[w]
    assert state["projector"].shape == (16, 3)  # left vectors since 16 <= 32
    assert state["exp_avg"].shape == (3, 32)  # moments live in the projected space
    assert "projector" not in opt.state[v] and opt.state[v]["exp_avg"].shape == (5,)
