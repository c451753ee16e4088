"""The ledger's fast budget check (RDP first, the tight backend only near the edge) never
admits a release that the exact check (the tight backend alone) would refuse, and memoised ε
equals a fresh computation."""

from __future__ import annotations

import math
import random

import pytest

from accounting import BudgetExceededError, Composed, Gaussian, Ledger, dpsgd_event, make_accountant
from accounting.history import _TIGHT, clear_caches, rdp_epsilon


def _random_history(rng: random.Random):
    events = []
    for _ in range(rng.randint(1, 4)):
        events.append(
            dpsgd_event(
                noise_multiplier=rng.uniform(0.5, 4.0),
                sampling_rate=10 ** rng.uniform(-3, -0.3),
                steps=rng.randint(1, 120),
            )
        )
    if rng.random() < 0.3:  # a private initialisation
        events.append(Gaussian(rng.uniform(2.0, 10.0)))
    return events


def _decisions(tmp_path, backend: str, trials: int, seed: int):
    rng = random.Random(seed)
    fast = slow = 0
    for t in range(trials):
        history, planned = _random_history(rng), _random_history(rng)[0]
        delta = 10 ** rng.uniform(-8, -3)
        exact_after = make_accountant(backend).compose(Composed((*history, planned))).epsilon(delta)
        # budgets straddle the exact answer, where the two checks could disagree
        budget = exact_after * rng.uniform(0.9, 1.15)
        ledger = Ledger(tmp_path / f"{backend}-{t}.jsonl", accountant=backend)
        for i, e in enumerate(history):
            ledger.record("c", i, "train", e)
        try:
            ledger.check("c", planned, budget=budget, delta=delta)
            admitted = True
        except BudgetExceededError:
            admitted = False
        exact_admits = exact_after <= budget
        assert not (admitted and not exact_admits), (history, planned, delta, budget)
        after_rdp = rdp_epsilon(_after(ledger, planned), delta)
        fast += after_rdp <= budget
        slow += after_rdp > budget
    return fast, slow


def _after(ledger: Ledger, planned):
    from accounting.events import flatten
    from accounting.history import extend

    return extend(ledger.history("c"), flatten(planned))


def test_fast_check_never_admits_what_the_exact_check_refuses_fastpld(tmp_path):
    # the default backend
    fast, slow = _decisions(tmp_path, "fastpld", trials=40, seed=3)
    assert fast > 0 and slow > 0


def test_fast_check_never_admits_what_the_exact_check_refuses_pld(tmp_path):
    fast, slow = _decisions(tmp_path, "pld", trials=12, seed=0)
    assert fast > 0 and slow > 0  # both paths were exercised


@pytest.mark.slow
def test_fast_check_never_admits_what_the_exact_check_refuses_pld_more(tmp_path):
    fast, slow = _decisions(tmp_path, "pld", trials=40, seed=2)
    assert fast > 0 and slow > 0


@pytest.mark.slow
def test_fast_check_never_admits_what_the_exact_check_refuses_prv(tmp_path):
    fast, slow = _decisions(tmp_path, "prv", trials=20, seed=1)
    assert fast > 0 and slow > 0


def test_memoised_epsilon_equals_a_fresh_computation_and_is_shared(tmp_path):
    clear_caches()
    ledger = Ledger(tmp_path / "l.jsonl", accountant="pld")
    one = dpsgd_event(noise_multiplier=1.2, sampling_rate=0.05, steps=20)
    other = dpsgd_event(noise_multiplier=0.9, sampling_rate=0.2, steps=7)
    for rnd in range(3):
        for cid in ("0", "1", "2"):  # three clients, one history
            ledger.record(cid, rnd, "train", one)
    ledger.record("3", 0, "train", other)
    eps = ledger.epsilons(delta=1e-5)
    fresh = make_accountant("pld").compose(one, 3).epsilon(1e-5)
    fresh_rdp = make_accountant("rdp").compose(one, 3).epsilon(1e-5)
    assert eps["0"] == eps["1"] == eps["2"] == min(fresh, fresh_rdp)
    assert eps["3"] == min(
        make_accountant("pld").compose(other).epsilon(1e-5),
        make_accountant("rdp").compose(other).epsilon(1e-5),
    )
    assert len(_TIGHT) == 2  # one computation per distinct history, not per client
    assert ledger.max_epsilon(delta=1e-5) == max(eps.values())
    # a reloaded ledger gives the same numbers (memoised or not)
    clear_caches()
    assert Ledger(tmp_path / "l.jsonl", accountant="pld").epsilons(delta=1e-5) == eps


def test_an_infinite_budget_or_a_clear_margin_is_admitted_without_the_tight_backend(tmp_path):
    clear_caches()
    ledger = Ledger(tmp_path / "l.jsonl", accountant="prv")
    e = dpsgd_event(noise_multiplier=1.0, sampling_rate=0.01, steps=100)
    after = ledger.spend("c", 1, "train", e, budget=math.inf, delta=1e-5)
    after2 = ledger.spend("c", 2, "train", e, budget=50.0, delta=1e-5)
    assert len(_TIGHT) == 0  # no PRV build: RDP proved both within budget
    assert after == rdp_epsilon(_hist(e, 1), 1e-5)
    assert after2 >= ledger.epsilon("c", delta=1e-5)  # reported ε is the tighter bound


def _hist(e, times):
    from accounting.events import flatten
    from accounting.history import history_of

    return history_of(flatten(e) * times)


@pytest.mark.parametrize(
    "q, sigma", [(0.01, 1.0), (0.1333, 1.277), (0.5, 0.8), (0.001, 3.0), (1.0, 5.0), (0.3, 0.4)]
)
def test_our_rdp_curve_equals_dp_accountings_at_the_same_integer_orders(q, sigma):
    """The fast check's RDP is our own closed form (a PRV query must not import
    dp-accounting); at integer orders it must equal dp-accounting's independent code."""
    from dp_accounting.rdp.rdp_privacy_accountant import (
        _compute_rdp_poisson_subsampled_gaussian as reference,
    )

    from accounting.history import ORDERS, _step_curve

    ours = _step_curve(q, sigma)
    theirs = reference(q, sigma, ORDERS)
    finite = theirs < 1e6  # dp-accounting returns inf where it overflows
    assert finite.sum() > 40
    assert ours[finite] == pytest.approx(theirs[finite], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "blocks",
    [
        [(0.01, 1.0, 1000)],
        [(0.1333, 1.277, 20)],
        [(1.0, 5.0, 1), (0.1, 1.36, 50)],
        [(0.5, 0.8, 50)],
        [(0.005, 1.0, 500), (0.009, 1.3, 500)],
    ],
)
def test_our_prv_domain_is_never_smaller_than_prv_accountants_own(blocks):
    """The PRV backend passes prv-accountant a discretisation domain computed from our cached
    RDP curves; it must be at least the one prv-accountant would compute (Remark 5.6)."""
    from prv_accountant import PoissonSubsampledGaussianMechanism
    from prv_accountant.accountant import compute_safe_domain_size

    from accounting.history import prv_domain_size

    prvs = [PoissonSubsampledGaussianMechanism(q, s) for q, s, _ in blocks]
    theirs = compute_safe_domain_size(prvs, [n for *_, n in blocks], 0.01, 1e-8)
    ours = prv_domain_size(blocks, eps_error=0.01, delta_error=1e-8)
    assert theirs <= ours <= theirs * 1.5 + 1.0
