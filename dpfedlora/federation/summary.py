"""The end of a run: ``summary.json``, the plots and the final state."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from accounting import Ledger

from ..config import Experiment, PrivacyConfig
from ..noise import noise_source_name
from .risk import summary_risk
from .rundir import RunDir
from .setup import Setup
from .state import RunState

__all__ = ["write_summary", "privacy_title"]


def privacy_title(p: PrivacyConfig, sigma: float) -> str:
    if not p.private:
        return "non-private"
    if p.target_tpr is not None:  # calibrated to attack risk; its ε at δ is the budget
        return (
            f"TPR ≤ {p.target_tpr:g} at FPR {p.target_fpr:g} (ε ≤ {p.budget:.3g}), δ = {p.delta:g}"
        )
    if p.target_epsilon is None:  # σ given, no budget: ε is whatever the ledger says
        return f"σ = {sigma:.3g}, δ = {p.delta:g}"
    return f"ε ≤ {p.target_epsilon:g}, δ = {p.delta:g}"


def _privacy(p: PrivacyConfig, ledger: Ledger | None, sigma: float) -> dict[str, Any]:
    eps = ledger.epsilons(delta=p.delta) if ledger is not None else {}
    answered = sorted(ledger.answered_by) if ledger is not None else []
    return {
        "private": p.private,
        "max_epsilon": max(eps.values(), default=0.0) if p.private else math.inf,
        "epsilon_per_client": eps,
        # membership-inference risk: per FPR the worst client's TPR bound, and each client's
        **summary_risk(ledger, p.private),
        "target_epsilon": p.target_epsilon if p.private else None,
        # a run calibrated to attack risk: the target, and the ε budget it stands for at δ
        "target_tpr": p.target_tpr if p.private else None,
        "target_fpr": p.target_fpr if p.private else None,
        "budget": p.budget if p.private and p.budget < math.inf else None,
        "delta": p.delta,
        "accountant": p.accountant,
        # the backends that really answered (a PRV failure falls back to PLD)
        "accountant_used": "+".join(answered)
        if answered
        else (p.accountant if p.private else None),
        "noise_source": noise_source_name(p.secure_mode) if p.private else None,
        "noise_multiplier": sigma,
        "clip_norm": p.clip_norm,
    }


def summarise(cfg: Experiment, setup: Setup, st: RunState, ledger: Ledger | None, seconds: float):
    history = st.history
    final = {k[5:]: v for k, v in (history[-1] if history else {}).items() if k.startswith("eval_")}
    return {
        "method": cfg.method.name,
        "rounds_planned": cfg.server.rounds,
        "rounds_completed": len(history),
        "stopped_reason": st.stopped_reason,
        **_privacy(cfg.privacy, ledger, st.noise_multiplier),
        "final": final,
        # what `final` was measured on: the held-out set, or (data.pool=public, a tuning proxy)
        # the public validation part
        "evaluated_on": "public_validation" if cfg.data.pool == "public" else "held_out",
        "eval_examples": len(setup.eval_data),
        "faulty_clients": st.faulty,
        "warnings": setup.warnings,
        "bytes_up": st.bytes_up,
        "bytes_down": st.bytes_down,
        "seconds": seconds,
        "seconds_per_round": seconds / max(1, len(history)),
        "clients": [
            {
                "cid": c.spec.cid,
                "examples": c.spec.num_examples,
                "sampling_rate": c.sampling_rate,
                "steps_per_round": c.steps,
                "rank": c.spec.rank,
            }
            for c in setup.clients
        ],
    }


def write_summary(
    run_dir: RunDir, cfg: Experiment, setup: Setup, st: RunState, ledger, seconds: float
) -> dict[str, Any]:
    from ..experiments.plots import plot_run

    summary = summarise(cfg, setup, st, ledger, seconds)
    run_dir.write_summary(summary)
    data, model = (Path(x).name.removeprefix("builtin:") for x in (cfg.data.name, cfg.model.name))
    title = f"{cfg.name}: {cfg.method.name} on {data} ({model}), " + privacy_title(
        cfg.privacy, st.noise_multiplier
    )
    plot_run(st.history, run_dir.plots, title=title)
    torch.save(st.state, run_dir.path / "checkpoint" / "final_state.pt")
    return summary
