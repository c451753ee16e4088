"""Empirical privacy audit in one training run (Steinke, Nasr, Jagielski 2023).

Protocol: m canaries, each included independently with probability 1/2 (seeded, recorded);
one DP-SGD run on client 0's shard as configured; a score per canary; guesses by a rule fixed
before the run (``guess_side``: "in" for the r/2 highest and "out" for the r/2 lowest scores, or
"in" for the r highest); the ε lower bound at the stated confidence (:mod:`accounting.audit`)
next to the accountant's ε upper bound for the same release.

Canaries:
* ``gradient`` (white-box): records whose clipped gradient is chosen by the auditor (norm C, the
  clip norm; design in :mod:`dpfedlora.audit.canaries`). At every logical DP step an included
  canary joins with probability q, exactly like a record. The attack sees every iterate (DP-SGD's
  guarantee covers releasing them all) and also runs a *shadow* run on the same shard and data
  batches with no canaries and no noise; the per-step difference removes the drift of the data's
  own gradients, which on a small adapter (the tiny config trains 578 numbers) projects onto
  every canary with a spread several times its signal: summing ⟨w_0 − w_T, d_i⟩ alone capped a
  no-noise audit at ε ≈ 1.4. The shadow depends on the data and the *other* records' batch
  membership only, never on the canaries' coins or the noise; the DP guarantee for each canary
  holds conditionally on those, so the bound stays valid.
* ``input`` (black-box): held-out examples with random labels, the included half added to the
  training shard. Score: minus the loss on the canary's label after training.

The audited run's release is recorded in its own ledger before training (scope "audit"), and so
is the shadow run (a NonPrivate event: it reads the shard without noise, and the audit's scores
depend on it). ``epsilon_upper`` is the accountant's bound for the audited release alone. With
``unsafe_no_noise`` the run has no noise: its event is NonPrivate (ε = ∞); only this audit
accepts that switch, as a check that the attack works.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from accounting import Ledger, NonPrivate, calibrate_dpsgd, make_accountant
from accounting.audit import one_run_epsilon_lower_bound
from accounting.audit_fdp import fdp_one_run_lower_bound

from ..client import Client, Trainer
from ..client.grad_sample import auditable
from ..config import Experiment, load_config, to_dict
from ..data.tensors import TensorData
from ..errors import UserError
from ..federation.rundir import RunDir, json_safe
from ..federation.setup import Setup, build_setup
from ..noise import derive_generator
from ..tasks import TASKS
from .canaries import design_canaries, gradient_scores
from .optim import CanaryDPOptimizer, SignedNoiseDPOptimizer

__all__ = ["audit_privacy", "lower_bounds", "AuditError"]


class AuditError(UserError, ValueError):
    """The audit cannot run as asked."""


def _concat(a: TensorData, b: TensorData) -> TensorData:
    return TensorData(
        torch.cat([a.input_ids, b.input_ids]),
        torch.cat([a.attention_mask, b.attention_mask]),
        torch.cat([a.labels, b.labels]),
    )


# How the attack turns scores into guesses; fixed before the run (choosing after seeing the
# scores would need a multiple-testing correction).
#   both: "in" for the r/2 highest scores, "out" for the r/2 lowest (Steinke et al.'s default)
#   in:   "in" for the r highest scores only. An included canary that Poisson sampling never
#         drew leaves no trace, so "out" guesses are capped by (1 - q)^T; without noise the
#         "in" guesses alone reach the ideal bound.
GUESS_SIDES = ("both", "in")


def count_correct(
    scores: torch.Tensor, included: torch.Tensor, *, guesses: int, side: str
) -> tuple[int, int]:
    """(correct guesses, guesses made) for the guessing rule ``side``."""
    order = torch.argsort(scores, descending=True)
    if side == "in":
        return int(included[order[:guesses]].sum()), guesses
    half = guesses // 2
    right = included[order[:half]].sum() + (~included[order[len(order) - half :]]).sum()
    return int(right), 2 * half


def _write_scores(path: Path, scores: torch.Tensor, included: torch.Tensor) -> None:
    """Per-canary scores and the truth, so other bounds (f-DP) can use the same run."""
    rows = "".join(f"{i},{int(b)},{float(v)!r}\n" for i, (b, v) in enumerate(zip(included, scores)))
    path.write_text("canary,included,score\n" + rows)


def _trajectory(
    trainer: Trainer, client: Client, view, names: list[str], sigma: float
) -> list[list[torch.Tensor]]:
    """Train ``client`` from ``view`` and return its trainable tensors after every step."""
    params = trainer.params
    iterates = [[(view[n] if n in view else params[n]).detach().clone() for n in names]]
    trainer.step_hook = lambda: iterates.append([params[n].detach().clone() for n in names])
    try:
        trainer.train_local(client, 1, view, noise_multiplier=sigma)
    finally:
        trainer.step_hook = None
    return iterates


def refuse_unaudited_modes(cfg: Experiment) -> None:
    """The audits instrument Opacus's hooks-mode optimizer and replay seeded batches."""
    if not auditable(cfg.privacy.grad_sample_mode):
        raise AuditError(
            "`privacy.grad_sample_mode` must be hooks for an audit (its canaries and signed noise "
            f"act on hooks-mode per-sample gradients). Found {cfg.privacy.grad_sample_mode!r}. "
            "Audit with --set privacy.grad_sample_mode=hooks: the mechanism is the same."
        )
    if cfg.privacy.secure_mode:
        raise AuditError(
            "`privacy.secure_mode` must be false for an audit: the audit replays seeded batches "
            "(a simulation). Found True. Audit with --set privacy.secure_mode=false."
        )


def _check_request(
    base: Experiment, out: Path, canaries: int, guesses: int, kind: str, guess_side: str
) -> None:
    """Every refusal before anything is read or written."""
    if guess_side not in GUESS_SIDES:
        raise AuditError(
            f"`guess side` must be one of {', '.join(GUESS_SIDES)}. Found {guess_side!r}."
        )
    if guesses > canaries or guesses < 2:
        raise AuditError(f"`guesses` must be in 2..{canaries}. Found {guesses}.")
    if kind not in ("gradient", "input"):
        raise AuditError(f"`canary kind` must be gradient or input. Found {kind!r}.")
    refuse_unaudited_modes(base)
    if (out / "ledger.jsonl").exists():
        raise AuditError(f"{out} already holds an audited run; choose another --out.")


def _audited_client(
    fed: Setup,
    cfg: Experiment,
    kind: str,
    included: torch.Tensor,
    audit_gen: torch.Generator,
    steps: int | None,
):
    """Client 0's shard (plus the included input canaries) as one long local run."""
    client, canaries = fed.clients[0], included.numel()
    data, canary_data = client.data, None
    if kind == "input":
        task = TASKS[cfg.model.task]
        if not task.labels_are_classes or len(fed.eval_data) < canaries:
            raise AuditError(
                "input canaries need a classification task with at least `canaries` held-out "
                f"examples ({len(fed.eval_data)} available)."
            )
        pick = torch.randperm(len(fed.eval_data), generator=audit_gen)[:canaries]
        canary_data = fed.eval_data.subset(pick)
        canary_data.labels = torch.randint(cfg.model.num_labels, (canaries,), generator=audit_gen)
        data = _concat(data, canary_data.subset(torch.nonzero(included).flatten()))
    q = (
        client.sampling_rate
        if cfg.train.sampling_rate > 0
        else min(1.0, cfg.train.batch_size / len(data))
    )
    total_steps = steps or client.steps * cfg.server.rounds
    audited = Client(replace(client.spec, num_examples=len(data)), data, q, total_steps)
    return audited, canary_data


def _audited_release(cfg: Experiment, audited: Client, unsafe_no_noise: bool):
    """(σ, event) of the audited run: calibrated (or given) σ; NonPrivate without noise."""
    p = cfg.privacy
    if unsafe_no_noise:
        return 0.0, NonPrivate("audit run with --unsafe-no-noise")
    if p.noise_multiplier is not None:
        sigma = p.noise_multiplier
    elif p.target_epsilon is not None:
        sigma = calibrate_dpsgd(
            target_epsilon=p.target_epsilon,
            delta=p.delta,
            sampling_rate=audited.sampling_rate,
            steps=audited.steps,
            accountant=p.accountant,
        ).noise_multiplier
    else:  # pragma: no cover - config validation requires one of them
        raise AuditError("set privacy.noise_multiplier or privacy.target_epsilon.")
    return sigma, audited.planned_event(sigma)


def _gradient_scores(fed, cfg, engine, audited, view, names, included, audit_gen, sigma):
    """Train with gradient canaries, then the shadow run; per-canary scores and the design."""
    m, q, p = included.numel(), audited.sampling_rate, cfg.privacy
    shapes = [view[n].shape if n in view else engine.params[n].shape for n in names]
    design = design_canaries(
        shapes,
        m,
        clip_norm=p.clip_norm,
        noise_multiplier=sigma,
        sampling_rate=q,
        generator=audit_gen,
    )
    engine.dp_optimizer_factory = lambda opt, **kw: CanaryDPOptimizer(
        opt,
        design=design,
        included=included,
        sampling_rate=q,
        canary_generator=derive_generator(cfg.seed, "audit-canary-draws", "gradient"),
        **kw,
    )
    real = _trajectory(engine, audited, view, names, sigma)
    # the shadow: same batches (seeded sampler), no canary joins, noise drawn but not added
    engine.dp_optimizer_factory = lambda opt, **kw: SignedNoiseDPOptimizer(opt, sign=0.0, **kw)
    shadow = _trajectory(engine, audited, view, names, sigma)
    unit = cfg.train.lr * p.clip_norm**2 / audited.expected_batch
    return gradient_scores(real, shadow, design, unit=unit, sampling_rate=q), design


def _input_scores(fed, engine, audited, view, canary_data, sigma) -> torch.Tensor:
    """Train on the shard with the included input canaries; minus each canary's loss."""
    res = engine.train_local(audited, 1, view, noise_multiplier=sigma)
    engine.load(res.trained)
    fed.model.eval()
    with torch.no_grad():
        scores = -TASKS[fed.cfg.model.task].loss(fed.model, canary_data.trimmed())
    fed.model.train()
    return scores


def lower_bounds(
    canaries: int, guesses: int, correct: int, delta: float, confidence: float
) -> dict[str, float]:
    """Every one-run bound from the same counts.

    - ``epsilon_lower``: Steinke, Nasr, Jagielski: not (ε, δ)-DP.
    - ``epsilon_lower_fdp``: Mahloujifar, Melis, Chaudhuri's test on the (ε, δ) curve: not
      (ε, δ)-DP either, from the whole curve instead of a binomial tail.
    - ``mu_lower`` and ``epsilon_lower_gdp``: the same test on Gaussian curves (the paper's
      empirical privacy): not μ-GDP, and that curve's ε at δ. The ε assumes a Gaussian-shaped
      curve, so it is not compared with the accountant's (ε, δ) upper bound.
    """
    kw = dict(canaries=canaries, guesses=guesses, correct=correct, delta=delta)
    mu, eps_gdp = fdp_one_run_lower_bound(**kw, confidence=confidence, family="gdp")
    _, eps_fdp = fdp_one_run_lower_bound(**kw, confidence=confidence, family="approx")
    return {
        "epsilon_lower": one_run_epsilon_lower_bound(**kw, confidence=confidence),
        "epsilon_lower_fdp": eps_fdp,
        "mu_lower": mu,
        "epsilon_lower_gdp": eps_gdp,
    }


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
    guess_side: str = "in",
) -> dict[str, Any]:
    out = Path(out)
    _check_request(base, out, canaries, guesses, kind, guess_side)
    # local SGD: the white-box score is then exactly the sum of per-step dot products
    cfg = load_config(None, {**to_dict(base), "train": {**to_dict(base.train), "optimizer": "sgd"}})
    p = cfg.privacy
    fed = build_setup(cfg)
    run_dir = RunDir(out)
    audit_gen = derive_generator(cfg.seed, "audit", kind, canaries)
    included = torch.rand(canaries, generator=audit_gen) < 0.5
    audited, canary_data = _audited_client(fed, cfg, kind, included, audit_gen, steps)
    sigma, event = _audited_release(cfg, audited, unsafe_no_noise)
    # write-ahead: both uses of the shard are recorded before either run reads it
    run_dir.create(cfg)
    ledger = Ledger(run_dir.ledger, accountant=p.accountant)
    ledger.record(audited.spec.cid, 0, "audit", event)
    if kind == "gradient":
        ledger.record(
            audited.spec.cid, 0, "audit", NonPrivate("audit shadow run: shard without noise")
        )
    m = fed.method
    engine = fed.trainer
    view = m.client_view(m.init_state(), audited.spec, 1)
    design = None
    if kind == "gradient":
        scores, design = _gradient_scores(
            fed, cfg, engine, audited, view, m.trainable_names(1), included, audit_gen, sigma
        )
    else:
        scores = _input_scores(fed, engine, audited, view, canary_data, sigma)
    correct, n_guesses = count_correct(scores, included, guesses=guesses, side=guess_side)
    _write_scores(out / "canary_scores.csv", scores, included)
    result = {
        "kind": kind,
        "canaries": canaries,
        "guesses": n_guesses,
        "correct_guesses": correct,
        "confidence": confidence,
        **lower_bounds(canaries, n_guesses, correct, p.delta, confidence),
        "epsilon_upper": make_accountant(p.accountant).compose(event).epsilon(p.delta),
        "delta": p.delta,
        "noise_multiplier": sigma,
        "sampling_rate": audited.sampling_rate,
        "steps": audited.steps,
        "method": cfg.method.name,
        "seed": cfg.seed,
        "audit_randomness": f"derive_generator(seed={cfg.seed}, 'audit', {kind!r}, {canaries})",
        "canaries_included": int(included.sum()),
        "unsafe_no_noise": unsafe_no_noise,
        "guess_side": guess_side,
        "canary_design": design.kind if design is not None else None,
        "canary_groups": design.groups if design is not None else None,
    }
    (out / "audit.json").write_text(json.dumps(json_safe(result), indent=1) + "\n")
    return result
