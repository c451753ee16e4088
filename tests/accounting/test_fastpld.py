"""The default backend, fastpld (our numpy PLD), against independent computations.

* the Gaussian mechanism composed k times has an exact δ(ε) (Balle and Wang 2018):
  δ = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) with μ = √k/σ; fastpld must be above it and close;
* one subsampled step's hockey-stick divergence is an integral we evaluate with quad;
* random heterogeneous histories against dp-accounting's PLD at interval 1e-4 (a different
  implementation of the same mathematics): never below it beyond float noise, within 0.05 %;
* the bin cap coarsens the grid (looser, still above) instead of growing without bound.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from accounting import Composed, dpsgd_event, make_accountant
from accounting.backends import DEFAULT_BACKEND
from accounting.backends import fastpld as fastpld_module
from accounting.pld_grid import _add_deltas, _remove_deltas, compose_delta, compose_epsilon
from tests.accounting.test_reference_values import _exact_gaussian_epsilon


def test_default_backend_is_fastpld():
    assert DEFAULT_BACKEND == "fastpld"
    assert make_accountant().name == "fastpld"


@pytest.mark.parametrize("sigma, k", [(1.0, 1), (2.0, 10), (5.0, 100), (0.8, 3)])
def test_composed_gaussian_matches_the_exact_curve_from_above(sigma, k):
    mu = math.sqrt(k) / sigma
    exact = _exact_gaussian_epsilon(mu, 1e-5)
    ours = compose_epsilon([(1.0, sigma, k)], 1e-5, 2e-4)
    assert ours >= exact - 1e-9
    assert ours == pytest.approx(exact, rel=2e-4)
    # and the δ side: at the exact ε, our δ is at least the true 1e-5, and close
    d = compose_delta([(1.0, sigma, k)], exact, 2e-4)
    assert 1e-5 * (1 - 1e-9) <= d <= 1e-5 * 1.01


@pytest.mark.parametrize("q, sigma", [(0.01, 1.0), (0.2, 0.7), (0.001, 3.0)])
def test_one_step_hockey_stick_equals_numerical_integral(q, sigma):
    # δ(ε) = ∫ max(0, p(x) − e^ε q(x)) dx for each direction, by quadrature
    def mix(x):
        return (1 - q) * norm.pdf(x, 0, sigma) + q * norm.pdf(x, 1, sigma)

    def base(x):
        return norm.pdf(x, 0, sigma)

    def hockey_stick(p, q_, eps):
        return integrate.quad(
            lambda x: max(0.0, p(x) - math.exp(eps) * q_(x)),
            -12 * sigma, 1 + 12 * sigma, limit=400, epsabs=1e-14,
        )[0]  # fmt: skip

    for eps in (-0.01, 0.0, 0.05, 0.5, 2.0):
        remove = hockey_stick(mix, base, eps)
        add = hockey_stick(base, mix, eps)
        ours_remove = _remove_deltas(np.array([eps]), q, sigma)[0]
        ours_add = _add_deltas(np.array([eps]), q, sigma)[0]
        assert ours_remove == pytest.approx(remove, rel=1e-6, abs=1e-12)
        assert ours_add == pytest.approx(add, rel=1e-6, abs=1e-12)


def _random_history(rng: random.Random) -> list[tuple[float, float, int]]:
    blocks = []
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.2:
            blocks.append((1.0, rng.uniform(5.0, 30.0), rng.randint(1, 50)))
        else:
            blocks.append((rng.uniform(0.001, 0.1), rng.uniform(0.6, 3.0), rng.randint(1, 4000)))
    return blocks


def _event(blocks):
    return Composed(
        tuple(dpsgd_event(noise_multiplier=s, sampling_rate=q, steps=n) for q, s, n in blocks)
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_histories_against_dp_accounting_pld(seed):
    rng = random.Random(seed)
    blocks = _random_history(rng)
    delta = rng.choice([1e-5, 1e-6, 1e-3])
    reference = make_accountant("pld").compose(_event(blocks)).epsilon(delta)
    ours = make_accountant("fastpld").compose(_event(blocks)).epsilon(delta)
    assert ours >= reference * (1 - 1e-7)
    assert ours <= reference * 1.0005


def test_benchmark_history_within_one_percent_of_pld_at_1e4():
    # the 20-block, 10,000-step history of benchmarks/bench_accounting.py
    blocks = [(0.005 + 0.001 * (i % 5), 1.0 + 0.1 * (i % 4), 500) for i in range(20)]
    reference = 3.412595  # dp-accounting 0.6.0 PLD at interval 1e-4 (bench_accounting.py)
    ours = make_accountant().compose(_event(blocks)).epsilon(1e-5)
    assert reference <= ours <= reference * 1.01


def test_bin_cap_coarsens_the_grid_and_stays_above(monkeypatch):
    blocks = [(0.01, 1.0, 2000), (0.05, 1.5, 300)]
    fine = make_accountant("fastpld").compose(_event(blocks)).epsilon(1e-5)
    monkeypatch.setattr(fastpld_module, "MAX_BINS", 2000)
    acc = make_accountant("fastpld")
    assert acc._interval(blocks) > acc.value_discretization_interval
    coarse = acc.compose(_event(blocks)).epsilon(1e-5)
    assert coarse >= fine and coarse == pytest.approx(fine, rel=0.05)


@pytest.mark.parametrize("bad", [0.0, -1e-4, 0.5, "1e-4", 1])
def test_bad_interval_rejected(bad):
    with pytest.raises(ValueError, match="value_discretization_interval"):
        make_accountant("fastpld", value_discretization_interval=bad)
