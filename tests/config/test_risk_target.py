"""privacy.target_tpr / privacy.target_fpr: validation, layering against target_epsilon, and the
budget a risk target stands for (resolved from the plan)."""

from __future__ import annotations

import math

import pytest

from accounting import dpsgd_event, make_accountant, tpr_at_fpr
from dpfedlora.config import ConfigError, PrivacyConfig, from_dict, load_config, to_dict
from dpfedlora.federation.planning import plan_budget, plan_noise, resolve_risk_budget
from tests.helpers import tiny_cfg

RISK = ("privacy.target_tpr=0.05", "privacy.target_fpr=0.01")


def test_a_risk_target_replaces_the_files_epsilon_target(tmp_path):
    p = tiny_cfg(*RISK).privacy  # tiny.yaml names target_epsilon: 3
    assert (p.target_tpr, p.target_fpr, p.target_epsilon) == (0.05, 0.01, None)
    assert load_config(None, list(RISK)).privacy.target_epsilon is None  # the default too
    again = from_dict(type(tiny_cfg()), to_dict(tiny_cfg(*RISK)))  # config.yaml round trip
    assert again.privacy == tiny_cfg(*RISK).privacy
    # and an ε target named later replaces a risk target from below it
    path = tmp_path / "risk.yaml"
    path.write_text("privacy:\n  target_tpr: 0.05\n  target_fpr: 0.01\n")
    p = load_config(path, ["privacy.target_epsilon=2"]).privacy
    assert (p.target_epsilon, p.target_tpr, p.target_fpr) == (2.0, None, None)
    with pytest.raises(ConfigError, match="must be unset"):  # both in one layer
        tiny_cfg(*RISK, "privacy.target_epsilon=2")


@pytest.mark.parametrize(
    "over,needle",
    [
        ({"target_tpr": 0.05}, "go together"),
        ({"target_fpr": 0.01}, "go together"),
        ({"target_tpr": 0.01, "target_fpr": 0.05}, "must be above `privacy.target_fpr`"),
        ({"target_tpr": 0.05, "target_fpr": 0.05}, "must be above `privacy.target_fpr`"),
        (
            {"target_tpr": 1.0, "target_fpr": 0.01},
            "`privacy.target_tpr` must be a number in (0, 1)",
        ),
        (
            {"target_tpr": 0.05, "target_fpr": 0.0},
            "`privacy.target_fpr` must be a number in (0, 1)",
        ),
        ({"target_tpr": "high", "target_fpr": 0.01}, "privacy.target_tpr"),
        ({"target_tpr": 0.05, "target_fpr": 0.01, "target_epsilon": 3}, "must be unset (null)"),
    ],
)
def test_bad_risk_targets_name_the_key(over, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, {"privacy": over})
    assert needle in str(info.value)


def test_the_budget_of_a_risk_target_needs_the_plan():
    p = PrivacyConfig(target_epsilon=None, target_tpr=0.05, target_fpr=0.01)
    with pytest.raises(ConfigError, match="dpfedlora calibrate --target-tpr"):
        p.budget  # noqa: B018
    plan = {"rounds": 4, "rates_and_steps": [(0.02, 50), (0.01, 50), (0.02, 25)], "init": None}
    resolve_risk_budget(p, **plan)
    sigma = plan_noise(p, **plan)
    acc = make_accountant().compose(dpsgd_event(noise_multiplier=sigma, sampling_rate=0.02,
                                                steps=200))  # fmt: skip
    # the binding client (q 0.02, 4 x 50 steps) meets the target just, and its ε is the budget
    assert 0.05 * 0.99 <= tpr_at_fpr(acc, 0.01) <= 0.05
    assert p.budget == plan_budget(p, **plan)
    assert p.budget == pytest.approx(acc.epsilon(1e-5), rel=1e-6)
    assert p == PrivacyConfig(target_epsilon=None, target_tpr=0.05, target_fpr=0.01)  # not a field
    assert "_resolved_budget" not in to_dict(p)
    # an ε target's budget is unchanged by planning
    q = PrivacyConfig(target_epsilon=3.0)
    resolve_risk_budget(q, **plan)
    assert (
        q.budget == 3.0
        and PrivacyConfig(noise_multiplier=1.0, target_epsilon=None).budget == math.inf
    )
