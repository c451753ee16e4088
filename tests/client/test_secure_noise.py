"""Secure noise: unpredictable from the config, correctly distributed; seeded noise reproducible."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from dpfedlora.federation import run
from dpfedlora.noise import SecureNoise, SeededNoise, make_noise_source
from tests.helpers import tiny_cfg

REF = torch.zeros(1, dtype=torch.float32)


# Secure draws cannot be seeded, so each KS check fails by chance with probability KS_ALPHA; at
# 1e-6 a CI run never flakes, while a real defect (n = 1e5) gives p-values far below it.
KS_ALPHA = 1e-6


def test_secure_gaussian_has_the_right_distribution():
    n, std = 200_000, 2.5
    z = SecureNoise().normal((n,), std=std, like=torch.zeros(1, dtype=torch.float64)).numpy()
    # mean within 5 standard errors, variance within 5 standard errors (χ² approx)
    assert abs(z.mean()) < 5 * std / math.sqrt(n)
    assert abs(z.var() / std**2 - 1) < 5 * math.sqrt(2 / n)
    assert stats.kstest(z / std, "norm").pvalue > KS_ALPHA
    # tails: P(|Z| > 3) = 0.0027 within 5 binomial standard errors
    tail = np.mean(np.abs(z / std) > 3)
    assert abs(tail - 0.0027) < 5 * math.sqrt(0.0027 / n)


def test_secure_uniform_and_sampling_rate():
    u = SecureNoise().uniform(100_000).numpy()
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > KS_ALPHA
    q = 0.13
    assert abs((u < q).mean() - q) < 5 * math.sqrt(q * (1 - q) / u.size)


def test_secure_ignores_seed_and_purpose_seeded_does_not():
    a = make_noise_source(True, 0, "noise", 1, "0").normal((64,), std=1.0, like=REF)
    b = make_noise_source(True, 0, "noise", 1, "0").normal((64,), std=1.0, like=REF)
    assert not torch.equal(a, b)
    c = make_noise_source(False, 0, "noise", 1, "0").normal((64,), std=1.0, like=REF)
    d = make_noise_source(False, 0, "noise", 1, "0").normal((64,), std=1.0, like=REF)
    assert torch.equal(c, d)
    assert SeededNoise(0, "x").name == "seeded" and SecureNoise().name == "secure"


def test_seeded_source_matches_opacus_noise_bit_for_bit():
    """Seeded runs keep their numbers: the same draw Opacus's non-secure path makes."""
    from opacus.optimizers.optimizer import _generate_noise

    from dpfedlora.noise import derive_generator

    ref = torch.zeros(5, 7)
    ours = SeededNoise(3, "noise", 1, "2").normal(ref.shape, std=0.7, like=ref)
    theirs = _generate_noise(std=0.7, reference=ref, generator=derive_generator(3, "noise", 1, "2"))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("secure", [False, True])
def test_dp_optimizer_noise_std_from_the_source(secure):
    from dpfedlora.client.dp_optimizer import SourcedDPOptimizer

    p = torch.nn.Parameter(torch.zeros(100_000))
    opt = SourcedDPOptimizer(
        torch.optim.SGD([p], lr=1.0),
        noise_multiplier=1.5,
        max_grad_norm=0.4,
        expected_batch_size=10,
        noise_source=make_noise_source(secure, 0, "t"),
    )
    p.summed_grad = torch.zeros_like(p)
    opt.add_noise()
    # noise std σ·C = 0.6 per coordinate, within 5 standard errors of the sample std
    assert abs(float(p.grad.std()) / 0.6 - 1) < 5 * math.sqrt(1 / (2 * p.numel()))


def _final(tmp, *over):
    cfg = tiny_cfg("server.rounds=1", "train.local_steps=2", *over)
    summary = run(cfg, tmp, progress=False, log=lambda s: None)
    return summary, torch.load(tmp / "checkpoint" / "final_state.pt")


def test_secure_runs_differ_seeded_runs_repeat(tmp_path):
    s1, a = _final(tmp_path / "s1", "privacy.secure_mode=true")
    s2, b = _final(tmp_path / "s2", "privacy.secure_mode=true")
    assert s1["noise_source"] == "secure"
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # ε does not depend on the noise values
    assert s1["max_epsilon"] == s2["max_epsilon"]
    p1, c = _final(tmp_path / "p1")
    p2, d = _final(tmp_path / "p2")
    assert p1["noise_source"] == "seeded"
    assert all(torch.equal(c[k], d[k]) for k in c)


def test_fedsb_private_init_noise_comes_from_the_source(tmp_path):
    from dpfedlora.methods.fedsb_init import gradient_sum
    from dpfedlora.tasks import TASKS
    from tests.helpers import tiny_setup

    fed = tiny_setup("method.name=fedsb", "method.init=private")
    data = fed.clients[0].data.subset(torch.arange(16))

    def noisy(source):
        return gradient_sum(
            fed.method,
            fed.model,
            TASKS["classification"].loss,
            data,
            clip_norm=1.0,
            noise_multiplier=8.0,
            noise_source=source,
        )

    a, b = noisy(SecureNoise()), noisy(SecureNoise())
    c, d = noisy(SeededNoise(0, "sb")), noisy(SeededNoise(0, "sb"))
    assert all(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(c[k], d[k]) for k in c)
    # the noise is N(0, (σC)²): the difference of two secure draws has std √2·8
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a])
    assert abs(float(diff.std()) / (8 * math.sqrt(2)) - 1) < 5 * math.sqrt(1 / (2 * diff.numel()))
