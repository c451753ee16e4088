"""Measure how DP noise reaches the model, per method (noise amplification).

For each method, under identical model, data, σ, clip norm, Poisson batches, local steps, rank
and seed, every client trains three times from the same start with the DP noise ξ, -ξ and 0
(common random numbers: the same batches and the same noise draws). With ΔW(·) the change of the
effective weights s·B(R)A (per adapted layer, and after server aggregation):

    signal     = ΔW(0)
    linear     = (ΔW(ξ) - ΔW(-ξ)) / 2          (odd in ξ)
    non-linear = (ΔW(ξ) + ΔW(-ξ)) / 2 - ΔW(0)   (even in ξ: noise x noise and beyond)

Closed-form predictions (methods.md §1, SGD with learning rate η, T steps, ν = σC/B, first
round from B = 0): FFA/RoLoRA linear E‖·‖² = s²η²Tν² d ‖A‖_F²; Fed-SB linear = s²η²Tν² r²
(B, A orthonormal); FedIT linear as FFA (B = 0) plus the noise x noise term
E‖·‖² = s²η⁴T²ν⁴ d r k. Local training uses plain SGD here: Adam's normalisation would make
every method non-linear in the noise and hide the structure being measured.

This audit is **not private**: it trains on the clients' shards three times and writes exact
signal norms. It therefore runs on synthetic data unless the caller passes
``allow_private_data`` (CLI: ``--unsafe-uses-private-data``), and every use is recorded as a
NonPrivate event (scope "audit") in the audit's own ledger before the shard is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accounting import Ledger, NonPrivate

from ..client.grad_sample import auditable
from ..config import Experiment, load_config, to_dict
from ..errors import UserError
from ..federation.setup import Setup, build_setup
from ..methods.aggregation import Tensors
from .optim import SignedNoiseDPOptimizer

__all__ = ["NoiseSetting", "audit_noise", "measure", "PUBLIC_DATA", "check_noise_audit"]

# Data that holds no private records: the noise audit may train on it without a flag.
PUBLIC_DATA = ("builtin:synthetic",)


def check_noise_audit(cfg: Experiment, *, allow_private_data: bool) -> None:
    """Refuse what the noise audit cannot do, before anything is read or written."""
    if not auditable(cfg.privacy.grad_sample_mode):
        raise UserError(
            "`privacy.grad_sample_mode` must be hooks for the noise audit (its signed noise acts "
            f"on hooks-mode per-sample gradients). Found {cfg.privacy.grad_sample_mode!r}. "
            "Use --set privacy.grad_sample_mode=hooks: the noise is the same."
        )
    # data.pool=public trains proxy clients on the share the config marks public only
    public = cfg.data.name in PUBLIC_DATA or cfg.data.pool == "public"
    if not public and not allow_private_data:
        raise UserError(
            f"`data.name` = {cfg.data.name!r} may hold private records, and the noise audit trains "
            "on every shard three times without accounting and writes exact signal norms. Pass "
            "--unsafe-uses-private-data to accept that (each use is recorded in the audit's "
            "ledger), audit on data.name=builtin:synthetic, or on the public share "
            "(data.public_fraction with data.pool=public)."
        )


SIGNS = (1.0, -1.0, 0.0)


@dataclass(frozen=True)
class NoiseSetting:
    method: str
    local_steps: int
    rank: int
    noise_multiplier: float


def _norm(t: Tensors) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in t.values()))


def _combine(a: Tensors, b: Tensors, fa: float, fb: float) -> Tensors:
    return {k: fa * a[k].double() + fb * b[k].double() for k in a}


def _prediction(setup: Setup, setting: NoiseSetting, cfg: Experiment) -> dict[str, float]:
    """The method's closed-form expected norms for client 0's first-round update (sqrt of
    E‖·‖²); NaN where the method has none."""
    m, c = setup.method, setup.clients[0]
    nu = setting.noise_multiplier * cfg.privacy.clip_norm / c.expected_batch
    params = dict(setup.model.named_parameters())
    pred = m.noise_prediction(
        params, scaling=m.scaling(c.spec), lr=cfg.train.lr, steps=setting.local_steps, nu=nu
    )
    if pred is None:
        return {"linear": math.nan, "nonlinear": math.nan}
    return {"linear": math.sqrt(pred[0]), "nonlinear": math.sqrt(pred[1])}


def _setting_config(base: Experiment, setting: NoiseSetting) -> Experiment:
    """``base`` with the setting's method, rank, σ and local steps, and plain local SGD."""
    shared = {k: v for k, v in to_dict(base.method).items() if k in ("rank", "alpha")}
    return load_config(
        None,
        {
            **to_dict(base),
            "method": {**shared, "name": setting.method, "rank": setting.rank},
            "privacy": {
                **to_dict(base.privacy),
                "mode": "sample",
                "noise_multiplier": setting.noise_multiplier,
            },
            "train": {
                **to_dict(base.train),
                "local_steps": setting.local_steps,
                "local_epochs": 0.0,
                "optimizer": "sgd",
            },
        },
    )


def _one_sign(setup: Setup, state: Tensors, sign: float, sigma: float) -> dict[str, Any]:
    """One round from ``state`` with noise sign x ξ: each client's and the global ΔW change."""
    m, trainer, rnd = setup.method, setup.trainer, 1
    trainer.dp_optimizer_factory = lambda opt, **kw: SignedNoiseDPOptimizer(opt, sign=sign, **kw)
    payloads, weights, specs, deltas = [], [], [], []
    for client in setup.clients:
        view = m.client_view(state, client.spec, rnd)
        res = trainer.train_local(client, rnd, view, noise_multiplier=sigma)
        after = m.effective_deltas({**view, **res.trained}, client.spec)
        before = m.effective_deltas(view, client.spec)
        deltas.append({k: after[k] - before[k] for k in after})
        payloads.append(m.payload(res.trained, view, client.spec, rnd))
        weights.append(m.weight(client.spec))
        specs.append(client.spec)
    new = m.aggregate(payloads, weights, state, specs, rnd)
    g_after = m.effective_deltas(m.eval_view(new), None)
    g_before = m.effective_deltas(m.eval_view(state), None)
    return {"clients": deltas, "global": {k: g_after[k] - g_before[k] for k in g_after}}


def _split(per_sign: dict[float, dict[str, Any]], get) -> tuple[Tensors, Tensors, Tensors]:
    """(signal, linear, non-linear) parts from the runs with ξ, -ξ and 0."""
    plus, minus, zero = (get(per_sign[s]) for s in SIGNS)
    lin = _combine(plus, minus, 0.5, -0.5)
    non = {k: 0.5 * (plus[k].double() + minus[k].double()) - zero[k].double() for k in plus}
    return zero, lin, non


def measure(base: Experiment, setting: NoiseSetting, ledger: Ledger | None = None) -> dict:
    """Signal, linear and non-linear noise norms for one method and setting."""
    cfg = _setting_config(base, setting)
    setup = build_setup(cfg)
    if ledger is not None:  # written before any shard is read
        for client in setup.clients:
            ledger.record(
                client.spec.cid,
                1,
                "audit",
                NonPrivate(f"noise audit {setting.method}: 3 runs (+ξ, -ξ, 0), exact norms"),
            )
    state = setup.method.init_state()
    per_sign = {s: _one_sign(setup, state, s, setting.noise_multiplier) for s in SIGNS}
    sig, lin, non = _split(per_sign, lambda d: d["global"])
    cs, cl, cn = _split(per_sign, lambda d: d["clients"][0])
    pred = _prediction(setup, setting, cfg)
    lin_n, non_n, sig_n = _norm(lin), _norm(non), _norm(sig)
    return {
        "method": setting.method,
        "local_steps": setting.local_steps,
        "rank": setting.rank,
        "noise_multiplier": setting.noise_multiplier,
        "signal_norm": sig_n,  # after aggregation
        "linear_noise_norm": lin_n,
        "nonlinear_noise_norm": non_n,
        "nonlinear_to_linear": non_n / lin_n if lin_n > 0 else math.nan,
        "snr": sig_n / math.hypot(lin_n, non_n) if lin_n or non_n else math.inf,
        "client0": {
            "signal_norm": _norm(cs),
            "linear_noise_norm": _norm(cl),
            "nonlinear_noise_norm": _norm(cn),
        },
        "predicted_client0_linear": pred["linear"],
        "predicted_client0_nonlinear": pred["nonlinear"],
        "layers": {
            name: {
                "signal": float(sig[name].norm()),
                "linear": float(lin[name].norm()),
                "nonlinear": float(non[name].norm()),
            }
            for name in sig
        },
    }


def audit_noise(
    base: Experiment,
    *,
    methods: list[str],
    local_steps: list[int],
    ranks: list[int],
    noise_multipliers: list[float],
    progress: bool = True,
    ledger_path: Path | None = None,
    allow_private_data: bool = False,
) -> list[dict[str, Any]]:
    check_noise_audit(base, allow_private_data=allow_private_data)
    settings = [
        NoiseSetting(m, t, r, s)
        for m in methods
        for t in local_steps
        for r in ranks
        for s in noise_multipliers
    ]
    rows = []
    iterator = settings
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(settings, desc="audit noise", unit="setting", leave=False)
    ledger = None if ledger_path is None else Ledger(ledger_path, accountant="rdp")
    for setting in iterator:
        rows.append(measure(base, setting, ledger))
    return rows
