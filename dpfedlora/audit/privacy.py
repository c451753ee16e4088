"""Empirical privacy audit in one training run (Steinke, Nasr, Jagielski 2023).

Protocol: m canaries, each included independently with probability 1/2 (seeded, recorded);
one DP-SGD run on client 0's shard as configured; a score per canary; guesses "in" for the r/2
highest and "out" for the r/2 lowest scores; the ε lower bound at the stated confidence
(:mod:`accounting.audit`) next to the ledger's ε upper bound for the same run.

Canaries:
* ``gradient`` (white-box "Dirac" canaries): a fixed random direction of norm C (the clip norm)
  in the space of the trainable tensors. At every step an included canary joins the Poisson
  batch with probability q, exactly like a record, and adds its direction to the clipped sum
  before the noise. Score: ⟨w_0 − w_T, direction⟩ (local SGD, so this is Σ_t ⟨w_{t-1} − w_t, ·⟩).
* ``input`` (black-box): held-out examples with random labels, the included half added to the
  training shard. Score: minus the loss on the canary's label after training.

The audited run's release is recorded in its own ledger before training (scope "audit").
With ``unsafe_no_noise`` the run has no noise: the ledger records a NonPrivate event (ε = ∞);
only this audit accepts that switch, as a check that the attack works.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from accounting import Ledger, NonPrivate, calibrate_dpsgd
from accounting.audit import one_run_epsilon_lower_bound

from ..client import LOSSES, Client, Engine, derive_generator
from ..config import Experiment, load_config, to_dict
from ..data import TensorData
from ..federation import Federation
from .optim import CanaryDPOptimizer

__all__ = ["audit_privacy", "AuditError"]


class AuditError(ValueError):
    """The audit cannot run as asked."""


def _concat(a: TensorData, b: TensorData) -> TensorData:
    return TensorData(
        torch.cat([a.input_ids, b.input_ids]),
        torch.cat([a.attention_mask, b.attention_mask]),
        torch.cat([a.labels, b.labels]),
    )


def audit_privacy(
    base: Experiment,
    out: str | Path,
    *,
    canaries: int = 1000,
    guesses: int = 100,
    kind: str = "gradient",
    confidence: float = 0.95,
    steps: int | None = None,
    unsafe_no_noise: bool = False,
) -> dict[str, Any]:
    if guesses > canaries or guesses < 2:
        raise AuditError(f"`guesses` must be in 2..{canaries}. Found {guesses}.")
    out = Path(out)
    if (out / "ledger.jsonl").exists():
        raise AuditError(f"{out} already holds an audited run; choose another --out.")
    # local SGD: the white-box score is then exactly the sum of per-step dot products
    cfg = load_config(None, {**to_dict(base), "train": {**to_dict(base.train), "optimizer": "sgd"}})
    fed = Federation(cfg, out, log=lambda s: None)
    audit_gen = derive_generator(cfg.seed, "audit", kind, canaries)
    included = torch.rand(canaries, generator=audit_gen) < 0.5
    client = fed.clients[0]
    data = client.data
    canary_data = None
    if kind == "input":
        if cfg.model.task != "classification" or len(fed.setup.eval_data) < canaries:
            raise AuditError(
                "input canaries need a classification task with at least `canaries` held-out "
                f"examples ({len(fed.setup.eval_data)} available)."
            )
        pick = torch.randperm(len(fed.setup.eval_data), generator=audit_gen)[:canaries]
        canary_data = fed.setup.eval_data.subset(pick)
        canary_data.labels = torch.randint(cfg.model.num_labels, (canaries,), generator=audit_gen)
        data = _concat(data, canary_data.subset(torch.nonzero(included).flatten()))
    q = (
        client.sampling_rate
        if cfg.train.sampling_rate > 0
        else min(1.0, cfg.train.batch_size / len(data))
    )
    total_steps = steps or client.steps * cfg.server.rounds
    audited = Client(replace(client.spec, num_examples=len(data)), data, q, total_steps)

    # Privacy of the audited run: calibrated (or given) σ, recorded before training.
    p = cfg.privacy
    if unsafe_no_noise:
        sigma, event = 0.0, NonPrivate("audit run with --unsafe-no-noise")
    else:
        if p.noise_multiplier is not None:
            sigma = p.noise_multiplier
        elif p.target_epsilon is not None:
            sigma = calibrate_dpsgd(
                target_epsilon=p.target_epsilon,
                delta=p.delta,
                sampling_rate=q,
                steps=total_steps,
                accountant=p.accountant,
            ).noise_multiplier
        else:  # pragma: no cover - config validation requires one of them
            raise AuditError("set privacy.noise_multiplier or privacy.target_epsilon.")
        event = audited.planned_event(sigma)
    fed.dir.create(cfg)
    ledger = Ledger(fed.dir.ledger, accountant=p.accountant)
    ledger.record(audited.spec.cid, 0, "audit", event)

    m = fed.method
    engine = Engine(cfg, m, fed.model, noise_multiplier=sigma)
    state = m.init_state()
    view = m.client_view(state, audited.spec, 1)
    names = m.trainable_names(1)
    directions = None
    if kind == "gradient":
        shapes = [view[n].shape if n in view else engine.params[n].shape for n in names]
        raw = [torch.randn((canaries, *s), generator=audit_gen) for s in shapes]
        norms = torch.sqrt(sum(r.flatten(1).pow(2).sum(1) for r in raw))
        directions = [r * (p.clip_norm / norms).view(-1, *([1] * (r.dim() - 1))) for r in raw]
        engine.dp_optimizer_factory = lambda opt, **kw: CanaryDPOptimizer(
            opt,
            directions=directions,
            included=included,
            sampling_rate=q,
            canary_generator=derive_generator(cfg.seed, "audit-canary-draws", kind),
            **kw,
        )
    engine.load(view)
    start = {n: engine.params[n].detach().clone() for n in names}
    res = audited.train(engine, 1, view)

    if kind == "gradient":
        delta_w = [start[n] - res.trained[n] for n in names]
        scores = sum(torch.einsum("m...,...->m", d, w) for d, w in zip(directions, delta_w))
    else:
        engine.load(res.trained)
        fed.model.eval()
        with torch.no_grad():
            scores = -LOSSES["classification"](fed.model, canary_data.trimmed())
        fed.model.train()
    half = guesses // 2
    order = torch.argsort(scores)
    guess_in, guess_out = order[-half:], order[:half]
    correct = int(included[guess_in].sum() + (~included[guess_out]).sum())
    n_guesses = 2 * half
    eps_lower = one_run_epsilon_lower_bound(
        canaries=canaries, guesses=n_guesses, correct=correct, delta=p.delta, confidence=confidence
    )
    eps_upper = ledger.epsilon(audited.spec.cid, delta=p.delta)
    result = {
        "kind": kind,
        "canaries": canaries,
        "guesses": n_guesses,
        "correct_guesses": correct,
        "confidence": confidence,
        "epsilon_lower": eps_lower,
        "epsilon_upper": eps_upper,
        "delta": p.delta,
        "noise_multiplier": sigma,
        "sampling_rate": q,
        "steps": total_steps,
        "method": cfg.method.name,
        "seed": cfg.seed,
        "audit_randomness": f"derive_generator(seed={cfg.seed}, 'audit', {kind!r}, {canaries})",
        "canaries_included": int(included.sum()),
        "unsafe_no_noise": unsafe_no_noise,
    }
    (out / "audit.json").write_text(
        json.dumps(
            {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in result.items()},
            indent=1,
        )
        + "\n"
    )
    return result
