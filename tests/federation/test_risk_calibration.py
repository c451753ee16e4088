"""A run calibrated to attack risk (privacy.target_tpr at privacy.target_fpr): σ meets the
target for every client, and the ledger enforces the ε budget that σ stands for."""

from __future__ import annotations

import pytest

from accounting import BudgetExceededError, Ledger, dpsgd_event
from dpfedlora.federation import run
from tests.helpers import tiny_cfg


def test_a_tiny_run_calibrated_to_risk(tmp_path):
    cfg = tiny_cfg("server.rounds=1", "train.local_steps=2", "privacy.target_tpr=0.2",
                   "privacy.target_fpr=0.01")  # fmt: skip
    summary = run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    assert summary["rounds_completed"] == 1
    sigma = summary["noise_multiplier"]
    ledger = Ledger(tmp_path / "r" / "ledger.jsonl")
    tprs = [ledger.risk(c, fprs=(0.01,)).tpr_at_fpr[0.01] for c in ledger.clients]
    assert len(tprs) == 4 and max(tprs) <= 0.2
    assert max(tprs) >= 0.2 * 0.99  # the smallest σ that meets it: the binding client is at it
    # the budget is the ε that σ gives at δ over the planned run: every client spent it exactly
    budget = cfg.privacy.budget
    assert max(summary["epsilon_per_client"].values()) == budget
    assert (summary["target_tpr"], summary["target_fpr"], summary["budget"]) == (0.2, 0.01, budget)
    # and the ledger enforces it: one more round of the same releases is refused
    client = ledger.clients[0]
    with pytest.raises(BudgetExceededError):
        ledger.check(client, ledger.events(client)[-1], budget=budget, delta=cfg.privacy.delta)
    event = ledger.events(client)[-1]
    assert event == dpsgd_event(noise_multiplier=sigma, sampling_rate=32 / 240, steps=2)
