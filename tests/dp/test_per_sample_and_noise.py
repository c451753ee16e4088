"""Opacus per-sample gradients equal a per-example loop; DP noise has std σC/B; preflight."""

from __future__ import annotations

import math

import pytest
import torch
from opacus import GradSampleModule

from dpfedlora.client.preflight import PreflightError, check_model, check_moved
from dpfedlora.noise import SeededNoise
from dpfedlora.tasks import TASKS
from tests.helpers import tiny_setup


def _per_example_reference(model, loss_fn, batch, names):
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(batch)):
        for n in names:
            params[n].grad = None
        loss_fn(model, batch.subset([i])).sum().backward()
        rows.append({n: params[n].grad.detach().clone() for n in names})
    return rows


@pytest.mark.parametrize("method, kind", [("fedit", ("lora_A", "lora_B")), ("fedsb", ("latent",))])
def test_opacus_per_sample_grads_equal_per_example_loop(tmp_path, method, kind):
    fed = tiny_setup(f"method.name={method}")
    model, m = fed.model, fed.method
    names = [n for n in m.trainable_names(1) if any(k in n for k in kind)]
    assert names
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    with torch.no_grad():  # non-zero B so that A's gradient is non-trivial
        for n, p in params.items():
            if "lora_B" in n or "latent" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    batch = fed.clients[0].data.subset(torch.arange(6))
    loss_fn = TASKS["classification"].loss
    ref = _per_example_reference(model, loss_fn, batch, names)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    for n in names:
        params[n].grad = None
    loss_fn(gsm, batch).sum().backward()
    for n in names:
        gs = params[n].grad_sample
        assert gs.shape == (6, *params[n].shape)
        for i in range(6):
            torch.testing.assert_close(gs[i], ref[i][n], atol=1e-6, rtol=1e-5)
    gsm.remove_hooks()


def test_noise_std_is_sigma_c_over_batch(tmp_path):
    """One DP-SGD step with SGD(lr=1): update = -(Σ_i clip(g_i) + ξ) / B. We compute Σ clip(g_i)
    independently (per-example loop) and check std(ξ / B) = σ C / B within 10 % over many draws."""
    sigma, clip, batch_size = 2.0, 0.5, 16
    fed = tiny_setup(
        "method.name=fedit",
        f"privacy.noise_multiplier={sigma}",
        f"privacy.clip_norm={clip}",
        f"train.batch_size={batch_size}",
        "train.optimizer=sgd",
        "train.lr=1.0",
    )
    m, model = fed.method, fed.model
    engine = fed.trainer
    names = m.trainable_names(1)
    params = dict(model.named_parameters())
    batch = fed.clients[0].data.subset(torch.arange(10))
    for n in names:
        params[n].requires_grad_(True)
    ref = _per_example_reference(model, TASKS["classification"].loss, batch, names)
    clipped = {n: torch.zeros_like(params[n]) for n in names}
    for row in ref:
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in row.values()))
        f = min(1.0, clip / (norm + 1e-6))
        for n in names:
            clipped[n] += f * row[n]
    engine._ensure_hooks(names)
    start = {n: params[n].detach().clone() for n in names}
    noises = []
    for draw in range(12):
        engine.load(start)
        opt = engine.dp_optimizer(
            torch.optim.SGD([params[n] for n in names], lr=1.0),
            SeededNoise(draw, "noise-test"),
            noise_multiplier=sigma,
        )
        engine.step(opt, batch, [params[n] for n in names])
        for n in names:
            update = params[n].detach() - start[n]
            noises.append((-update * batch_size - clipped[n]).flatten() / batch_size)
    xi = torch.cat(noises)
    expected = sigma * clip / batch_size
    assert xi.numel() > 10_000
    assert abs(float(xi.mean())) < 0.05 * expected
    assert float(xi.std()) == pytest.approx(expected, rel=0.10)


def test_preflight_eval_mode_and_unsupported_module(tmp_path):
    fed = tiny_setup("method.name=ffa")
    model = fed.model
    names = fed.method.trainable_names(1)
    model.eval()
    with pytest.raises(PreflightError, match="eval mode"):
        check_model(model, names)
    model.train()
    # a trainable tensor in a module without an Opacus sampler (LayerNorm's custom subclass)
    ln = next(n for n, _ in model.named_parameters() if "LayerNorm.weight" in n)

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3))

    model.base_model.model.custom = Custom()
    with pytest.raises(PreflightError, match="no Opacus per-sample gradient sampler"):
        check_model(model, [*names, "base_model.model.custom.weight"])
    assert ln  # LayerNorm itself is supported by Opacus; no error for it
    check_model(model, [*names, ln])


def test_preflight_no_update_is_an_error():
    t = {"a": torch.ones(2)}
    with pytest.raises(PreflightError, match="silent no-update"):
        check_moved(t, {"a": torch.ones(2)})
    check_moved(t, {"a": torch.tensor([1.0, 2.0])})


def test_gradient_checkpointing_non_reentrant_is_refused(tmp_path):
    fed = tiny_setup("method.name=ffa")
    base = fed.model.base_model.model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with pytest.raises(PreflightError, match="use_reentrant"):
        check_model(fed.model, fed.method.trainable_names(1))


def test_gradient_checkpointing_reentrant_is_accepted(tmp_path):
    fed = tiny_setup("method.name=ffa")
    base = fed.model.base_model.model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    check_model(fed.model, fed.method.trainable_names(1))
