"""Calibration never overshoots the target and lands within 1 % (or 0.01 absolute)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting import CalibrationError, calibrate_dpsgd, dpsgd_event, make_accountant


def _check(cal, target, q, steps, delta, backend):
    # Re-evaluate independently with a fresh accountant: the guarantee is on this number.
    eps = (
        make_accountant(backend)
        .compose(dpsgd_event(noise_multiplier=cal.noise_multiplier, sampling_rate=q, steps=steps))
        .epsilon(delta)
    )
    assert eps <= target
    assert eps >= target - max(0.01 * target, 0.01)
    assert eps == pytest.approx(cal.epsilon)


@settings(max_examples=25, deadline=None)
@given(
    target=st.floats(0.3, 12.0),
    q=st.floats(0.001, 0.3),
    steps=st.integers(1, 5000),
    delta=st.sampled_from([1e-4, 1e-5, 1e-6]),
)
def test_calibration_never_overshoots_rdp(target, q, steps, delta):
    try:
        cal = calibrate_dpsgd(
            target_epsilon=target, delta=delta, sampling_rate=q, steps=steps, accountant="rdp"
        )
    except CalibrationError:
        return  # an unreachable target is refused, never answered wrongly
    _check(cal, target, q, steps, delta, "rdp")


@settings(max_examples=4, deadline=None)
@given(
    target=st.floats(0.5, 8.0),
    q=st.floats(0.002, 0.1),
    steps=st.integers(10, 2000),
)
def test_calibration_never_overshoots_pld(target, q, steps):
    cal = calibrate_dpsgd(
        target_epsilon=target, delta=1e-5, sampling_rate=q, steps=steps, accountant="pld"
    )
    _check(cal, target, q, steps, 1e-5, "pld")


@pytest.mark.parametrize("target, q, steps", [(3.0, 0.01, 1000), (1.0, 0.064, 300)])
def test_calibration_prv(target, q, steps):
    cal = calibrate_dpsgd(
        target_epsilon=target, delta=1e-5, sampling_rate=q, steps=steps, accountant="prv"
    )
    _check(cal, target, q, steps, 1e-5, "prv")


def test_unreachable_target_is_refused():
    # q = 1 with a million steps cannot reach ε = 0.01 with σ <= 1e4.
    with pytest.raises(CalibrationError, match="Raise the target"):
        calibrate_dpsgd(
            target_epsilon=0.001, delta=1e-5, sampling_rate=1.0, steps=10**6, accountant="rdp"
        )


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf")])
def test_bad_target(bad):
    with pytest.raises(ValueError, match="target_epsilon"):
        calibrate_dpsgd(
            target_epsilon=bad, delta=1e-5, sampling_rate=0.01, steps=10, accountant="rdp"
        )
