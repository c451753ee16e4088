"""Attack risk (TPR at FPR, advantage) from the privacy profile: accounting.risk and the ledger.

The references are independent: the exact trade-off of the Gaussian mechanism, the same
(ε, δ(ε)) envelope computed here on a dense ε grid from dp-accounting's own PLD, and riskcal.
"""

import math

import numpy as np
import pytest
from scipy.stats import norm

from accounting import (
    DEFAULT_FPRS,
    Ledger,
    NonPrivate,
    Risk,
    attack_risk,
    dpsgd_event,
    equivalent_epsilon,
    make_accountant,
    noise_multiplier_for_risk,
    tpr_at_fpr,
)
from accounting.calibrate import CalibrationError
from accounting.risk import noise_multiplier_for_risk_event


def _dpsgd(sigma, q, steps, backend="fastpld"):
    return make_accountant(backend).compose(
        dpsgd_event(noise_multiplier=sigma, sampling_rate=q, steps=steps)
    )


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
def test_gaussian_mechanism_bound_is_at_least_the_exact_curve_and_within_2_percent(sigma):
    # one Gaussian release with sensitivity 1 is μ-GDP with μ = 1/σ exactly (Dong, Roth, Su
    # 2019): TPR(α) = Φ(Φ⁻¹(α) + 1/σ), advantage = 2Φ(1/(2σ)) − 1
    risk = attack_risk(_dpsgd(sigma, 1.0, 1), fprs=(1e-4, *DEFAULT_FPRS, 0.5))
    for a, tpr in risk.tpr_at_fpr.items():
        exact = norm.cdf(norm.ppf(a) + 1 / sigma)
        assert exact * (1 - 1e-12) <= tpr <= exact * 1.02, (a, tpr, exact)
    exact_adv = 2 * norm.cdf(1 / (2 * sigma)) - 1
    assert exact_adv * (1 - 1e-12) <= risk.advantage <= exact_adv * 1.02


def _profile_envelope(sigma, q, steps, fprs):
    """min over a dense ε grid of min(1, δ + e^ε α, 1 − e^−ε (1 − δ − α)), δ(ε) from
    dp-accounting's pessimistic PLD (both directions: its get_delta_for_epsilon takes the max)."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    dist = pld.from_gaussian_mechanism(
        standard_deviation=sigma,
        sampling_prob=q,
        value_discretization_interval=1e-4,
        pessimistic_estimate=True,
    ).self_compose(steps)
    eps = np.concatenate([np.linspace(0, 2, 4001), np.linspace(2, 12, 5001)])
    delta = np.asarray(dist.get_delta_for_epsilon(eps))
    tpr = {
        a: min(1.0, float(np.min(np.minimum(delta + np.exp(eps) * a,
                                            1 - np.exp(-eps) * (1 - delta - a)))))
        for a in fprs
    }  # fmt: skip
    return tpr, float(delta[0])


@pytest.mark.parametrize("sigma,q,steps", [(1.0, 0.01, 1000), (0.7, 0.05, 200)])
def test_dpsgd_bound_matches_dp_accountings_profile_within_2_percent(sigma, q, steps):
    risk = attack_risk(_dpsgd(sigma, q, steps))
    ref, ref_adv = _profile_envelope(sigma, q, steps, DEFAULT_FPRS)
    for a in DEFAULT_FPRS:
        # never below: our grid search only ever reports an evaluated bound of a profile at
        # least as pessimistic (the slack is float rounding of two discretisations)
        assert ref[a] * (1 - 1e-6) <= risk.tpr_at_fpr[a] <= ref[a] * 1.02, a
    assert ref_adv * (1 - 1e-6) <= risk.advantage <= ref_adv * 1.02


def test_agrees_with_riskcal_and_is_never_below_it():
    riskcal = pytest.importorskip("riskcal.calibration.dpsgd")
    sigma, q, steps = 1.0, 0.01, 1000
    risk = attack_risk(_dpsgd(sigma, q, steps))
    beta = riskcal.get_beta_for_dpsgd(sigma, q, steps, alpha=list(DEFAULT_FPRS))
    for a, b in zip(DEFAULT_FPRS, beta):
        # riskcal reads one neighbouring direction's curve; ours covers both, so it may be
        # slightly higher (1.4 % at α = 0.001 here), never lower
        assert (1 - b) * (1 - 1e-6) <= risk.tpr_at_fpr[a] <= (1 - b) * 1.02, a
    adv = riskcal.get_advantage_for_dpsgd(sigma, q, steps)
    assert risk.advantage == pytest.approx(adv, rel=1e-3)


def test_empty_and_non_private_histories():
    empty = attack_risk(make_accountant())
    assert empty.tpr_at_fpr == {a: pytest.approx(a) for a in DEFAULT_FPRS}
    assert empty.advantage == 0.0
    leaked = attack_risk(make_accountant().compose(NonPrivate("debug dump")))
    assert leaked == Risk({a: 1.0 for a in DEFAULT_FPRS}, 1.0)


def test_tpr_grows_with_fpr_and_with_spending_and_json_keys():
    acc = _dpsgd(1.0, 0.01, 1000)
    risk = attack_risk(acc, fprs=(0.1, 0.001, 0.01))
    assert list(risk.tpr_at_fpr) == [0.1, 0.001, 0.01]  # the caller's order
    t = [risk.tpr_at_fpr[a] for a in DEFAULT_FPRS]
    assert t == sorted(t) and all(x > a for x, a in zip(t, DEFAULT_FPRS))
    assert tpr_at_fpr(acc, 0.01) == risk.tpr_at_fpr[0.01]
    more = attack_risk(_dpsgd(1.0, 0.01, 2000))
    assert all(more.tpr_at_fpr[a] > risk.tpr_at_fpr[a] for a in DEFAULT_FPRS)
    assert more.advantage > risk.advantage
    assert set(risk.to_json()) == {"tpr_at_fpr", "advantage"}
    assert list(risk.to_json()["tpr_at_fpr"]) == ["0.1", "0.001", "0.01"]


@pytest.mark.parametrize("fprs", [(0.0,), (1.0,), (-0.1,), (float("nan"),), ("0.1",), (True,), ()])
def test_bad_fprs_are_refused_naming_the_argument(fprs):
    with pytest.raises(ValueError, match="`fprs`"):
        attack_risk(make_accountant(), fprs=fprs)


def test_calibration_to_risk_meets_the_target_without_overshooting():
    sigma = noise_multiplier_for_risk(target_tpr=0.05, at_fpr=0.01, sampling_rate=0.01, steps=1000)
    tpr = tpr_at_fpr(_dpsgd(sigma, 0.01, 1000), 0.01)
    assert 0.05 * 0.99 <= tpr <= 0.05
    # a little less noise breaks the target: σ is (nearly) the smallest
    assert tpr_at_fpr(_dpsgd(sigma * 0.97, 0.01, 1000), 0.01) > 0.05
    eps = equivalent_epsilon(noise_multiplier=sigma, sampling_rate=0.01, steps=1000, delta=1e-5)
    assert eps == _dpsgd(sigma, 0.01, 1000).epsilon(1e-5)


def test_calibration_of_a_single_gaussian_release_recovers_the_gdp_sigma():
    # TPR(α) = Φ(Φ⁻¹(α) + 1/σ) = T  <=>  σ = 1 / (Φ⁻¹(T) − Φ⁻¹(α))
    exact = 1 / (norm.ppf(0.2) - norm.ppf(0.01))
    sigma = noise_multiplier_for_risk_event(
        target_tpr=0.2,
        at_fpr=0.01,
        make_event=lambda s: dpsgd_event(noise_multiplier=s, sampling_rate=1.0, steps=1),
    )
    assert exact <= sigma <= exact * 1.02


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"target_tpr": 0.05, "at_fpr": 0.05}, "target_tpr"),
        ({"target_tpr": 0.01, "at_fpr": 0.05}, "target_tpr"),
        ({"target_tpr": 1.0, "at_fpr": 0.01}, "target_tpr"),
        ({"target_tpr": 0.05, "at_fpr": 0.0}, "at_fpr"),
        ({"target_tpr": 0.05, "at_fpr": math.nan}, "at_fpr"),
    ],
)
def test_calibration_refuses_bad_targets_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        noise_multiplier_for_risk(**kwargs, sampling_rate=0.01, steps=100)


def test_calibration_to_an_unreachable_risk_says_so():
    with pytest.raises(CalibrationError, match="no noise multiplier"):
        noise_multiplier_for_risk_event(
            target_tpr=0.0101,
            at_fpr=0.01,
            make_event=lambda s: NonPrivate("leak"),
            start=5e3,
        )


def test_ledger_risk_per_client_and_max(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    assert ledger.max_risk().advantage == 0.0
    for rnd in (1, 2):
        ledger.record("0", rnd, "train", dpsgd_event(noise_multiplier=1.0, sampling_rate=0.01,
                                                      steps=500))  # fmt: skip
    ledger.record("1", 1, "train", dpsgd_event(noise_multiplier=2.0, sampling_rate=0.05, steps=50))
    r0, r1 = ledger.risk("0"), ledger.risk("1")
    # replay equals composing the client's events directly
    assert r0 == attack_risk(_dpsgd(1.0, 0.01, 1000))
    assert ledger.risk("nobody").advantage == 0.0
    top = ledger.max_risk(fprs=(0.01,))
    assert top.tpr_at_fpr == {0.01: max(r0.tpr_at_fpr[0.01], r1.tpr_at_fpr[0.01])}
    assert top.advantage == max(r0.advantage, r1.advantage)
    again = Ledger(tmp_path / "ledger.jsonl")
    assert again.risk("0") is r0  # memoised by history, not recomputed
