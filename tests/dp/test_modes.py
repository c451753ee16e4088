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


def test_galore_under_dp_updates_inside_the_projected_subspace():
    """Direct weight averaging with GaLore (rank 2, projector refreshed every step) behind
    Opacus's DP optimizer: each 2-D update lies in the span of the rank-2 projector, which is
    the top-2 left singular space of the *noised* gradient (post-processing), and Adam's moments
    are 2 x n. ``galore-torch`` is not used: its package imports its 8-bit optimizer, which
    needs bitsandbytes, and it projects only param groups that carry a ``rank`` key."""
    fed = tiny_setup(
        "method.name=full",
        "method.local_optimizer=galore",
        "method.galore_rank=2",
        "method.galore_update_proj_gap=1",
        "privacy.noise_multiplier=1.0",
    )
    trainer, m = fed.trainer, fed.method
    names = m.trainable_names(1)
    for n, p in trainer.params.items():
        p.requires_grad_(n in names)
    trainer._ensure_hooks(names)
    params = [trainer.params[n] for n in names]
    opt = trainer.dp_optimizer(
        m.make_optimizer(params, fed.cfg.train), SeededNoise(0, "galore"), noise_multiplier=1.0
    )
    assert isinstance(opt.original_optimizer, GaLoreAdamW)
    batch = fed.clients[0].data.subset(torch.arange(16))
    for step in range(2):
        before = {n: trainer.params[n].detach().clone() for n in names}
        trainer.step(opt, batch, params)
        checked = 0
        for n in names:
            p, delta = trainer.params[n], trainer.params[n].detach() - before[n]
            state = opt.original_optimizer.state[p]
            if p.dim() != 2 or min(p.shape) <= 2:
                assert "projector" not in state and state["exp_avg"].shape == p.shape
                continue
            proj = state["projector"]
            assert proj.shape == (p.shape[0], 2) and state["exp_avg"].shape == (2, p.shape[1])
            # the update has no component outside span(P) ...
            outside = delta - proj @ (proj.T @ delta)
            assert float(outside.norm()) < 1e-5 * max(float(delta.norm()), 1e-12), n
            assert float(delta.norm()) > 0, n
            # ... and P spans the top-2 left singular vectors of the noised gradient it saw
            u = torch.linalg.svd(p.grad.double(), full_matrices=False)[0][:, :2]
            cos = torch.linalg.svdvals(proj.double().T @ u)
            torch.testing.assert_close(cos, torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)
            checked += 1
        assert checked >= 4, step  # query and value of both layers
