"""The hybrid path on CPU: a bfloat16 base with float32 adapters, host-resident client states,
checkpointing, shapes built on the meta device."""

from __future__ import annotations

import math

import pytest
import torch
from opacus import GradSampleModule

from dpfedlora.federation import run
from dpfedlora.models.shapes import build_shape, shape_config
from dpfedlora.noise import SeededNoise
from dpfedlora.tasks import TASKS
from tests.helpers import ALL_METHODS, tiny_cfg, tiny_setup

SHORT = ("train.local_steps=2", "server.rounds=1")
CAUSAL = ("model.name=builtin:tiny-llama", "model.task=causal_lm", "model.train_head=false")


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_trains_over_a_bfloat16_base(tmp_path, name):
    cfg = tiny_cfg(f"method.name={name}", "model.dtype=bfloat16", *SHORT)
    summary = run(cfg, tmp_path / name, progress=False, log=lambda s: None)
    assert summary["stopped_reason"] == "completed" and summary["faulty_clients"] == []
    assert 0 < summary["max_epsilon"] <= cfg.privacy.target_epsilon
    assert math.isfinite(summary["final"]["loss"])


def test_tiny_causal_lm_trains_over_a_bfloat16_base(tmp_path):
    cfg = tiny_cfg(*CAUSAL, "model.dtype=bfloat16", *SHORT)
    summary = run(cfg, tmp_path / "lm", progress=False, log=lambda s: None)
    assert summary["stopped_reason"] == "completed" and summary["faulty_clients"] == []
    assert math.isfinite(summary["final"]["perplexity"])


def _trainables_are_float32(setup) -> list[str]:
    params = dict(setup.model.named_parameters())
    names = sorted(set(setup.method.trainable_names(1)) | set(setup.method.trainable_names(2)))
    assert all(params[n].dtype == torch.float32 for n in names)
    return names


@pytest.mark.parametrize("name", ["ffa", "full"])
def test_trained_tensors_are_float32_and_the_base_is_not(name):
    setup = tiny_setup(f"method.name={name}", "model.dtype=bfloat16")
    names = _trainables_are_float32(setup)
    frozen = [p.dtype for n, p in setup.model.named_parameters() if n not in names]
    assert torch.bfloat16 in frozen


def _grad_samples(setup, batch, names):
    params = dict(setup.model.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in names)
    gsm = GradSampleModule(setup.model, batch_first=True, loss_reduction="sum")
    TASKS[setup.cfg.model.task].loss(gsm, batch).sum().backward()
    out = {n: params[n].grad_sample.detach().clone() for n in names}
    gsm.remove_hooks()
    return out


def _nonzero_b(setup):
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for n, p in setup.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_bfloat16_base_per_sample_grads_match_float32_base_and_a_per_example_loop():
    """Same weights (the float32 model's, rounded to bfloat16 for the base): per-sample
    gradients are float32, equal a per-example loop on the same bf16 model (atol 1e-6), and
    agree with the float32 base within the precision of bfloat16 (cosine > 0.99, norm error
    < 5e-2; the reference measured 0.99937 and 1.6e-2 on this model size)."""
    f32 = tiny_setup("method.name=fedit", *CAUSAL)
    bf16 = tiny_setup("method.name=fedit", *CAUSAL, "model.dtype=bfloat16")
    with torch.no_grad():
        src = dict(f32.model.named_parameters())
        for n, p in bf16.model.named_parameters():
            p.copy_(src[n])
    _nonzero_b(f32)
    _nonzero_b(bf16)
    names = [n for n in f32.method.trainable_names(1) if "lora_" in n]
    batch = f32.clients[0].data.subset(torch.arange(6))
    ref = _grad_samples(f32, batch, names)
    low = _grad_samples(bf16, batch, names)
    flat = lambda gs: torch.cat([gs[n].flatten(1) for n in names], 1)  # noqa: E731
    a, b = flat(ref), flat(low)
    assert b.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert float(cos.min()) > 0.99
    norm_err = (b.norm(dim=1) - a.norm(dim=1)).abs() / a.norm(dim=1)
    assert float(norm_err.max()) < 5e-2
    # the same bf16 model, one example at a time (an independent computation)
    params = dict(bf16.model.named_parameters())
    for i in range(len(batch)):
        for n in names:
            params[n].grad = None
        TASKS["causal_lm"].loss(bf16.model, batch.subset([i])).sum().backward()
        for n in names:
            torch.testing.assert_close(low[n][i], params[n].grad, atol=1e-6, rtol=1e-5)


def test_dp_step_over_a_bfloat16_base_equals_the_manual_per_example_update():
    """SGD(lr=1), one DP step: update = -(Σ_i clip(g_i) + ξ) / B with ξ from the same seeded
    source; Σ clip(g_i) from a per-example loop on the bf16 model; clipped norms ≤ C."""
    sigma, clip, expected = 1.5, 0.05, 8
    setup = tiny_setup(
        "method.name=ffa", "model.dtype=bfloat16", f"privacy.noise_multiplier={sigma}",
        f"privacy.clip_norm={clip}", "train.optimizer=sgd", "train.lr=1.0",
    )  # fmt: skip
    trainer, names = setup.trainer, setup.method.trainable_names(1)
    params = dict(setup.model.named_parameters())
    batch = setup.clients[0].data.subset(torch.arange(5))
    for n in names:
        params[n].requires_grad_(True)
    clipped = {n: torch.zeros_like(params[n]) for n in names}
    for i in range(len(batch)):
        for n in names:
            params[n].grad = None
        TASKS["classification"].loss(setup.model, batch.subset([i])).sum().backward()
        norm = math.sqrt(sum(float(params[n].grad.pow(2).sum()) for n in names))
        f = min(1.0, clip / (norm + 1e-6))
        for n in names:
            clipped[n] += f * params[n].grad
    assert sum(float(c.pow(2).sum()) for c in clipped.values()) > 0
    start = {n: params[n].detach().clone() for n in names}
    trainer._ensure_hooks(names)
    opt = trainer.dp_optimizer(
        torch.optim.SGD([params[n] for n in names], lr=1.0),
        SeededNoise(3, "bf16-step"),
        noise_multiplier=sigma,
        expected_batch=expected,
    )
    trainer.step(opt, batch, [params[n] for n in names])
    source = SeededNoise(3, "bf16-step")
    for n in names:
        noise = source.normal(params[n].shape, std=sigma * clip, like=params[n].detach())
        manual = start[n] - (clipped[n] + noise) / expected
        torch.testing.assert_close(params[n].detach(), manual, atol=1e-6, rtol=1e-5)


def test_client_states_live_on_the_host_between_rounds(tmp_path):
    from dpfedlora.federation import Federation

    cfg = tiny_cfg("method.name=fedsb", "model.dtype=bfloat16", *SHORT)
    fed = Federation(cfg, tmp_path / "r", log=lambda s: None)
    state = fed.method.init_state()
    trained = fed.setup.trainer.snapshot(fed.method.trainable_names(1))
    params = dict(fed.setup.model.named_parameters())
    for tensors in (state, trained):
        for n, t in tensors.items():
            assert t.device.type == "cpu" and t.is_pinned() == torch.cuda.is_available()
            assert t.dtype == torch.float32
            if n in params:  # a copy, never the model's own storage
                assert t.data_ptr() != params[n].data_ptr()


def test_gradient_checkpointing_keeps_per_sample_grads_exact():
    plain = tiny_setup("method.name=fedit", *CAUSAL)
    ckpt = tiny_setup("method.name=fedit", *CAUSAL, "train.gradient_checkpointing=true")
    _nonzero_b(plain)
    _nonzero_b(ckpt)
    names = [n for n in plain.method.trainable_names(1) if "lora_" in n]
    batch = plain.clients[0].data.subset(torch.arange(4))
    a, b = _grad_samples(plain, batch, names), _grad_samples(ckpt, batch, names)
    assert set(b) == set(names)  # none left unset (the non-reentrant trap)
    for n in names:
        torch.testing.assert_close(b[n], a[n], atol=1e-6, rtol=1e-5)


def test_shape_on_meta_then_materialised_matches_a_normal_build():
    """to_empty leaves RoPE's inv_freq uninitialised and unties the LM head; the shape builder
    restores both (compared with a model built the ordinary way)."""
    import transformers

    from dpfedlora.config import ModelConfig

    cfg = ModelConfig(name="builtin:llama-tiny-shape", task="causal_lm", dtype="bfloat16")
    model = build_shape(cfg, torch.device("cpu"))
    normal = transformers.LlamaForCausalLM._from_config(shape_config(cfg), dtype=torch.bfloat16)
    rope = dict(model.named_buffers())["model.rotary_emb.inv_freq"]
    assert rope.dtype == torch.float32
    torch.testing.assert_close(rope, dict(normal.named_buffers())["model.rotary_emb.inv_freq"])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert next(model.parameters()).dtype == torch.bfloat16
    assert all(torch.isfinite(p).all() for p in model.parameters())
