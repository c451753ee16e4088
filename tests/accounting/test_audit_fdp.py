"""The f-DP one-run audit bound (Mahloujifar, Melis, Chaudhuri, ICML 2025)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from accounting.audit import one_run_epsilon_lower_bound
from accounting.audit_fdp import (
    approx_dp_trade_off,
    fdp_one_run_lower_bound,
    fdp_rejects,
    gdp_epsilon,
    gdp_trade_off,
)


@pytest.mark.parametrize(
    "sigma, published", [(0.5, 9.99), (1.0, 4.37), (2.0, 1.99), (4.0, 0.92)]
)  # fmt: skip
def test_gdp_epsilon_matches_the_papers_theoretical_column(sigma, published):
    # Table 1 of the paper: ε at δ = 1e-5 of the Gaussian mechanism with noise σ (μ = 1/σ),
    # printed to two decimals (truncated)
    eps = gdp_epsilon(1 / sigma, 1e-5)
    assert published <= eps < published + 0.01


def test_trade_off_curves_and_inverses():
    for bar, inv in (gdp_trade_off(0.7), approx_dp_trade_off(1.3, 1e-3)):
        xs = np.linspace(0, 1, 101)
        ys = [bar(x) for x in xs]
        assert all(b >= a - 1e-15 for a, b in zip(ys, ys[1:]))  # increasing
        assert all(y >= x - 1e-15 for x, y in zip(xs, ys))  # f(x) <= 1 - x
        for y in (0.2, 0.5, 0.9):
            assert bar(inv(y)) == pytest.approx(y, abs=1e-12)
    bar, inv = approx_dp_trade_off(1.0, 0.01)
    assert bar(0.0) == pytest.approx(0.01) and bar(1.0) == 1.0 and inv(0.005) == 0.0


def test_two_canaries_under_pure_dp_reject_exactly_above_randomized_response():
    # Hand computation, m = c' = c = 2, k = 2, (ε, 0)-DP with f̄⁻¹(y) = y·e^-ε below the kink:
    #   r2 = τ, h2 = 0;  h1 = τe^-ε, r1 = τ + h1 = τ(1 + e^-ε);  h0 = r1·e^-ε, r0 = r1
    #   reject iff r0 + h0 = τ(1 + e^-ε)² > 1  iff  τ > (e^ε / (1 + e^ε))²,
    # the probability that randomized response (the tight ε-DP mechanism) gets both right.
    for eps in (0.5, 1.0, 2.0):
        inv = approx_dp_trade_off(eps, 0.0)[1]
        tight = (math.exp(eps) / (1 + math.exp(eps))) ** 2
        kw = dict(canaries=2, guesses=2, correct=2)
        assert not fdp_rejects(inv, tau=tight * (1 - 1e-6), **kw)
        assert fdp_rejects(inv, tau=min(0.999, tight * (1 + 1e-6)), **kw)


@pytest.mark.parametrize(
    "m, guesses, correct, mu, eps",
    [
        (1000, 100, 100, 1.2255, 5.549),
        (1000, 10, 10, 0.3230, 1.228),
        (1000, 200, 190, 0.9081, 3.916),
        (1000, 1000, 900, 0.8804, 3.779),
        (100000, 1500, 1429, 0.7818, 3.299),
    ],
)
def test_reference_values_of_an_independent_implementation(m, guesses, correct, mu, eps):
    # μ* and ε(δ = 1e-5) at 95 % from a separate implementation of the paper's Algorithm 3
    # (with the monotone h of the authors' code), written while reviewing the paper
    got_mu, got_eps = fdp_one_run_lower_bound(
        canaries=m, guesses=guesses, correct=correct, delta=1e-5
    )
    assert got_mu == pytest.approx(mu, abs=2e-4)
    assert got_eps == pytest.approx(eps, abs=2e-3)


def test_tighter_than_steinke_nasr_jagielski_when_every_guess_is_right():
    kw = dict(canaries=1000, guesses=100, correct=100, delta=1e-5)
    steinke = one_run_epsilon_lower_bound(**kw)  # 3.465, the most 100 guesses can show
    _, gdp = fdp_one_run_lower_bound(**kw)
    _, approx = fdp_one_run_lower_bound(**kw, family="approx")
    assert steinke == pytest.approx(3.465, abs=1e-3)
    assert gdp > 1.5 * steinke and approx > steinke


def _gaussian_game(mu: float, seed: int, m: int = 1000, guesses: int = 100) -> int:
    """Correct guesses of the top-``guesses`` attack on a μ-GDP release of m canary bits."""
    g = np.random.default_rng(seed)
    u = g.random(m) < 0.5
    scores = u * mu + g.standard_normal(m)  # one canary moves its score by μ: μ-GDP
    return int(u[np.argsort(-scores)[:guesses]].sum())


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0])
def test_never_above_the_true_privacy_of_a_gaussian_mechanism(mu):
    # The audited mechanism is exactly μ-GDP and (ε(μ), δ)-DP. At 95 % confidence the bound may
    # exceed the truth in at most 5 % of runs; 40 runs exceed it more than 6 times with
    # probability < 0.5 % if it is sound. It also has to find something: at μ ≥ 1 most runs
    # prove more than a third of the truth.
    true_eps = gdp_epsilon(mu, 1e-5)
    found = []
    for seed in range(40):
        c = _gaussian_game(mu, seed)
        found.append(
            (
                fdp_one_run_lower_bound(canaries=1000, guesses=100, correct=c, delta=1e-5)[0],
                fdp_one_run_lower_bound(
                    canaries=1000, guesses=100, correct=c, delta=1e-5, family="approx"
                )[1],
            )
        )
    mus, eps = np.array(found).T
    assert (mus > mu).sum() <= 6 and (eps > true_eps).sum() <= 6
    if mu >= 1:
        assert np.median(mus) > mu / 3


def test_bad_inputs():
    with pytest.raises(ValueError, match="correct <= guesses"):
        fdp_one_run_lower_bound(canaries=10, guesses=5, correct=6, delta=1e-5)
    with pytest.raises(ValueError, match="confidence"):
        fdp_one_run_lower_bound(canaries=10, guesses=5, correct=5, delta=1e-5, confidence=1.0)
    with pytest.raises(ValueError, match="family"):
        fdp_one_run_lower_bound(canaries=10, guesses=5, correct=5, delta=1e-5, family="rdp")
    with pytest.raises(TypeError):
        fdp_one_run_lower_bound(canaries=10.0, guesses=5, correct=5, delta=1e-5)
    # nothing correct, or a single guess: nothing to reject
    assert fdp_one_run_lower_bound(canaries=10, guesses=5, correct=0, delta=1e-5) == (0.0, 0.0)
    assert fdp_one_run_lower_bound(canaries=1, guesses=1, correct=1, delta=1e-5) == (0.0, 0.0)
