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


# ------------------------------------------------------------------ the release at float64


def _spy_noise64(monkeypatch, source: SecureNoise) -> list[np.ndarray]:
    """Record every float64 noise vector ``source`` draws (its stream is left untouched)."""
    drawn: list[np.ndarray] = []
    real = source._noise64

    def spy(n, *, std):
        z = real(n, std=std)
        drawn.append(z.copy())
        return z

    monkeypatch.setattr(source, "_noise64", spy)
    return drawn


def test_secure_release_is_the_float64_sum_rounded_once(monkeypatch):
    """A large clipped sum (1e8 in float32: a step of 8) plus noise of std 1: the release is
    float32(float64(s) + z64) for every coordinate, from the very draws the source made."""
    source = SecureNoise()
    drawn = _spy_noise64(monkeypatch, source)
    s = torch.full((50_000,), 1e8, dtype=torch.float32)
    s[::2] = torch.linspace(-3e7, 3e7, 25_000)
    out = source.add_noise(s, std=1.0)
    assert out.dtype == torch.float32 and len(drawn) == 1
    z64 = torch.from_numpy(drawn[0])
    assert torch.equal(out, (s.double() + z64).float())
    # the division by the batch size also happens before the one rounding
    drawn.clear()
    out = source.add_noise(s, std=1.0, divide_by=3.0)
    assert torch.equal(out, ((s.double() + torch.from_numpy(drawn[0])) / 3.0).float())


def test_secure_release_keeps_low_bits_float32_noise_loses(monkeypatch):
    """Noise whose float32 rounding decides the release: the float64 add differs from the old
    float32 add. With s = 1e8 the float32 step is 8; z = ±4.0000001 rounds to ±4.0f, so
    float32(s) + float32(z) is an exact tie, rounded to even (1e8 = 12 500 000 · 8, even), i.e.
    1e8, while s + z lies beyond the midpoint and rounds to 1e8 ± 8."""
    source = SecureNoise()
    targets = np.array([4.0000001, -4.0000001, 0.5, 0.25])
    # the first of the four standard-normal draws carries 2z (the sum is halved), the rest 0
    draws = iter([2 * targets, *[np.zeros(4)] * 3])
    monkeypatch.setattr(source, "_standard_normal", lambda n: next(draws))
    s = torch.tensor([1e8, 1e8, 1e8, 3.0], dtype=torch.float32)
    out = source.add_noise(s, std=1.0)
    z64 = torch.from_numpy(targets)
    assert torch.equal(out, (s.double() + z64).float())
    old = s + z64.float()  # the noise cast to float32 first, then a float32 add
    assert out.tolist() == [1e8 + 8, 1e8 - 8, 1e8, 3.25]
    assert old.tolist() == [1e8, 1e8, 1e8, 3.25]


@pytest.mark.parametrize("fused", [False, True])
def test_dp_optimizers_release_secure_noise_at_float64(monkeypatch, fused):
    """Both optimizer paths hand the clipped sum to the source, not a float32 noise tensor."""
    from dpfedlora.client.dp_optimizer import FusedDPOptimizer, SourcedDPOptimizer

    source = SecureNoise()
    drawn = _spy_noise64(monkeypatch, source)
    p = torch.nn.Parameter(torch.zeros(1_000))
    opt = (FusedDPOptimizer if fused else SourcedDPOptimizer)(
        torch.optim.SGD([p], lr=1.0),
        noise_multiplier=1e-12,  # std σC = 1 against a sum of 1e8: the low bits matter
        max_grad_norm=1e12,  # no clipping: the one row is the clipped sum exactly
        expected_batch_size=4,
        loss_reduction="mean",
        noise_source=source,
    )
    row = torch.full((1, 1_000), 1e8, dtype=torch.float32)
    p.grad_sample, p.grad = row.clone(), torch.zeros_like(p)
    opt.step()
    z64 = torch.from_numpy(drawn[0])
    released = (row[0].double() + z64).float()
    if fused:  # (s + z) / B in float64, rounded once
        expected = ((row[0].double() + z64) / 4).float()
    else:  # s + z rounded once, then Opacus's division in float32
        expected = released / 4
    assert torch.equal(p.grad, expected)
    assert torch.equal(p.detach(), -expected)


def test_seeded_add_noise_keeps_opacus_arithmetic():
    """Seeded runs keep their numbers: add_noise is ``s + normal(...)`` in the sum's dtype."""
    s = torch.randn(3, 5, generator=torch.Generator().manual_seed(1)) * 1e4
    a = SeededNoise(4, "n").add_noise(s, std=0.3)
    b = s + SeededNoise(4, "n").normal(s.shape, std=0.3, like=s)
    assert torch.equal(a, b)
    c = SeededNoise(4, "n").add_noise(s, std=0.3, divide_by=7.0)
    assert torch.equal(c, b / 7.0)
    assert torch.equal(SeededNoise(4, "n").add_noise(s, std=0.0), s)


def test_secure_add_noise_statistics():
    """add_noise on a zero sum: mean within 5 standard errors of 0, variance within 5 standard
    errors of std² (χ² approximation), and the dtype and shape of the sum."""
    n, std = 200_000, 0.7
    s = torch.zeros(400, 500, dtype=torch.float32)
    z = SecureNoise().add_noise(s, std=std)
    assert z.dtype == torch.float32 and z.shape == s.shape
    z = z.double().flatten().numpy()
    assert abs(z.mean()) < 5 * std / math.sqrt(n)
    assert abs(z.var() / std**2 - 1) < 5 * math.sqrt(2 / n)
    assert stats.kstest(z / std, "norm").pvalue > KS_ALPHA
    # no noise: the sum itself, in a new tensor
    same = SecureNoise().add_noise(s, std=0.0)
    assert torch.equal(same, s) and same.data_ptr() != s.data_ptr()
