"""One-run audit bound: closed forms, published table values, randomized-response simulation."""

import math

import numpy as np
import pytest

from accounting.audit import one_run_epsilon_lower_bound, one_run_p_value


def test_all_correct_without_delta_is_closed_form():
    # p(ε) = q^r with q = 1/(1+e^-ε): the bound solves q^100 = 0.05 -> ε = logit(0.05^(1/100))
    q = 0.05 ** (1 / 100)
    expected = math.log(q / (1 - q))
    got = one_run_epsilon_lower_bound(canaries=1000, guesses=100, correct=100, delta=0.0)
    assert got == pytest.approx(expected, abs=1e-4)
    assert got == pytest.approx(3.493, abs=1e-3)


def test_no_guesses_or_no_correct_gives_zero():
    assert one_run_epsilon_lower_bound(canaries=100, guesses=0, correct=0, delta=1e-5) == 0.0
    assert one_run_epsilon_lower_bound(canaries=100, guesses=50, correct=0, delta=1e-5) == 0.0
    # at chance level (half right) nothing can be certified
    assert one_run_epsilon_lower_bound(canaries=1000, guesses=100, correct=50, delta=1e-5) == 0.0
    assert one_run_p_value(canaries=10, guesses=0, correct=0, epsilon=1.0, delta=0) == 1.0


@pytest.mark.parametrize(
    "m, r, v, delta, expected",
    [
        (1000, 100, 100, 1e-5, 3.465),
        (1000, 1000, 1000, 1e-5, 5.782),
        (1000, 100, 90, 1e-5, 1.626),
        (1000, 200, 150, 1e-5, 0.820),
        (5000, 500, 450, 1e-5, 1.941),
        (100, 10, 10, 1e-5, 1.048),
    ],
)
def test_reference_table(m, r, v, delta, expected):
    got = one_run_epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta)
    assert got == pytest.approx(expected, abs=2e-3)


def test_p_value_monotone_in_epsilon():
    ps = [
        one_run_p_value(canaries=1000, guesses=100, correct=80, epsilon=e, delta=1e-5)
        for e in (0.0, 0.5, 1.0, 2.0)
    ]
    assert all(a <= b for a, b in zip(ps, ps[1:]))


@pytest.mark.parametrize("true_eps", [1.0, 2.0])
def test_randomized_response_simulation(true_eps):
    """ε-randomized response on every canary: the 95 % bound exceeds the true ε in about 5 % of
    trials at most (we allow 10 % over 100 trials), and is informative (not always 0)."""
    rng = np.random.default_rng(0)
    m, r, trials = 1000, 200, 100
    exceed, positive = 0, 0
    p_truth = math.exp(true_eps) / (1 + math.exp(true_eps))
    for _ in range(trials):
        truth = rng.random(m) < 0.5
        # the mechanism outputs the membership bit truthfully with prob. e^ε / (1 + e^ε)
        out = np.where(rng.random(m) < p_truth, truth, ~truth)
        score = out.astype(float) + rng.random(m) * 1e-3  # tie-break
        order = np.argsort(score)
        top, bottom = order[-r // 2 :], order[: r // 2]
        correct = int(truth[top].sum() + (~truth[bottom]).sum())
        lb = one_run_epsilon_lower_bound(canaries=m, guesses=r, correct=correct, delta=0.0)
        exceed += lb > true_eps
        positive += lb > 0
    assert exceed <= 10
    assert positive >= 50
