"""ε and membership-inference risk per client, for a run's rows and its summary.

Risk (:func:`accounting.attack_risk`): what a client's privacy profile allows a membership-
inference attacker at most, as the true-positive rate it can reach at each false-positive rate
α in :data:`accounting.DEFAULT_FPRS` (0.1 %, 1 %, 10 %), and its advantage (max TPR - FPR).
Like ε, an upper bound from the ledger: a real attack does no better, usually far worse.

A non-private run has no bound, as its ε is ∞: TPR 1 at every FPR and advantage 1, and its
per-client maps are empty, as ``epsilon_per_client`` is (there is no ledger).

Cost: ε is memoised by history in the ledger; a client's risk is computed here only when its
history changed since the last round (keyed by history, so clients with equal histories share
one computation), which keeps the per-round overhead to the clients that trained.
"""

from __future__ import annotations

import math
from typing import Any

from accounting import DEFAULT_FPRS, Ledger, Risk
from accounting.history import History

__all__ = ["RiskView", "no_bound", "privacy_fields", "summary_risk"]


def no_bound(fprs: tuple[float, ...] = DEFAULT_FPRS) -> dict[str, Any]:
    """The risk of a non-private release: every member found at any FPR."""
    return Risk({a: 1.0 for a in fprs}, 1.0).to_json()


class RiskView:
    """Per-client ε and risk from one ledger, risk memoised by history."""

    def __init__(self, ledger: Ledger, *, delta: float) -> None:
        self.ledger = ledger
        self.delta = delta
        self._risk: dict[History, dict[str, Any]] = {}

    def risk(self, cid: str) -> dict[str, Any]:
        """``Risk.to_json()`` of client ``cid`` (a client with no release: TPR = FPR)."""
        h = self.ledger.history(cid)
        if h not in self._risk:
            self._risk[h] = self.ledger.risk(cid).to_json()
        return self._risk[h]

    def row_fields(self, cids: list[str]) -> dict[str, Any]:
        """A round's privacy fields for every client in ``cids`` (those not yet sampled
        included, at ε 0)."""
        eps = {c: self.ledger.epsilon(c, delta=self.delta) for c in cids}
        tpr = {c: self.risk(c)["tpr_at_fpr"] for c in cids}
        worst = {a: max(t[a] for t in tpr.values()) for a in next(iter(tpr.values()), {})}
        return {
            "max_epsilon": self.ledger.max_epsilon(delta=self.delta),
            "epsilon_per_client": eps,
            "tpr_at_fpr": tpr,
            "max_tpr_at_fpr": worst,
        }


def privacy_fields(view: RiskView | None, cids: list[str]) -> dict[str, Any]:
    """The row's privacy fields; ``view`` None: a non-private run."""
    if view is not None:
        return view.row_fields(cids)
    return {
        "max_epsilon": math.inf,
        "epsilon_per_client": {},
        "tpr_at_fpr": {},
        "max_tpr_at_fpr": no_bound()["tpr_at_fpr"],
    }


def summary_risk(ledger: Ledger | None, private: bool) -> dict[str, Any]:
    """``risk`` (per FPR the worst client) and ``risk_per_client`` for summary.json."""
    if not private or ledger is None:
        return {"risk": no_bound(), "risk_per_client": {}}
    return {
        "risk": ledger.max_risk().to_json(),
        "risk_per_client": {c: ledger.risk(c).to_json() for c in ledger.clients},
    }
