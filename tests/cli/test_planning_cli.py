"""Planning in data units (--dataset-size/--batch-size/--epochs/--rounds) and bounded queries."""

from __future__ import annotations

import json
import math

import pytest

from accounting import dpsgd_event, make_accountant
from tests.cli.test_account_cli import run_cli


def test_data_units_give_the_q_and_steps_they_imply():
    # q = 32 / 240; ceil(1 / q) = 8 steps per round, 5 rounds: 40 steps
    units = run_cli(
        "epsilon", "--noise-multiplier", "1.0", "--dataset-size", "240", "--batch-size", "32",
        "--epochs", "1", "--rounds", "5", "--delta", "1e-5", "--accountant", "rdp", "--json",
    )  # fmt: skip
    assert units.returncode == 0, units.stderr
    data = json.loads(units.stdout)
    assert data["sampling_rate"] == 32 / 240 and data["steps"] == 40
    direct = make_accountant("rdp").compose(
        dpsgd_event(noise_multiplier=1.0, sampling_rate=32 / 240, steps=40)
    )
    assert data["epsilon"] == pytest.approx(direct.epsilon(1e-5), rel=1e-12)
    text = run_cli(
        "calibrate", "--target-epsilon", "3", "--dataset-size", "240", "--batch-size", "32",
        "--epochs", "1.5", "--delta", "1e-5", "--accountant", "rdp",
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    # 1.5 epochs at q = 2/15: ceil(11.25) = 12 steps, one round
    assert "q = 32 / 240 = 0.133333; 12 steps per round x 1 rounds = 12 steps" in text.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset-size", "240", "--batch-size", "32"], "missing --epochs"),
        (["--steps", "10"], "argument --sample-rate is required with --steps"),
        (["--sample-rate", "0.1", "--steps", "3", "--epochs", "1"], "found both (--epochs)"),
        (["--dataset-size", "10", "--batch-size", "32", "--epochs", "1"], "at most --dataset-size"),
        (["--dataset-size", "0", "--batch-size", "1", "--epochs", "1"], "--dataset-size"),
    ],
)
def test_planning_mistakes_exit_2_with_one_line(args, message):
    out = run_cli("epsilon", "--noise-multiplier", "1.0", *args, "--delta", "1e-5")
    assert out.returncode == 2 and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_query_too_large_for_prv_is_answered_by_rdp_and_labelled():
    # prv-accountant used to allocate without bound here and be killed
    out = run_cli(
        "epsilon", "--noise-multiplier", "0.1", "--sample-rate", "0.5", "--steps", "1000",
        "--delta", "1e-5", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["accountant"] == "rdp" and math.isfinite(data["epsilon"])
    from accounting.events import flatten
    from accounting.history import history_of, rdp_epsilon

    event = dpsgd_event(noise_multiplier=0.1, sampling_rate=0.5, steps=1000)
    assert data["epsilon"] == rdp_epsilon(history_of(flatten(event)), 1e-5)
    # our integer-order RDP: valid, and never below dp-accounting's finer-grained RDP
    assert data["epsilon"] >= make_accountant("rdp").compose(event).epsilon(1e-5)
    text = run_cli(
        "epsilon", "--noise-multiplier", "0.1", "--sample-rate", "0.5", "--steps", "1000",
        "--delta", "1e-5",
    )  # fmt: skip
    assert "(rdp upper bound;" in text.stdout
