"""The federation: set-up, privacy planning, and the round loop.

One round (numbered as in DESIGN.md):
  1 sample clients (seeded)
  2 per client: planned event -> ledger.check (budget) -> ledger.append (write-ahead)
  3 client.train: load its view into the shared model, DP-SGD on its trainable tensors only
  4 method.aggregate -> new global state
  5 evaluate; log loss, metrics, max ε so far, bytes up/down
  6 checkpoint atomically (the ledger is already durable)

Every random draw comes from a generator derived from (seed, purpose, round, client), so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accounting import (
    BudgetExceededError,
    Composed,
    Event,
    Gaussian,
    Ledger,
    SelfComposed,
    dpsgd_event,
    noise_multiplier_for,
)

from .advice import shard_warnings
from .aggregation import Tensors
from .client import Client, Engine, derive_generator
from .config import ConfigError, Experiment, to_dict
from .data import TensorData, load_data
from .errors import UserError
from .evaluate import evaluate
from .interrupts import StopRequest
from .methods import make_method
from .methods.base import ClientSpec, Method, aggregation_gap
from .models import build_model
from .noise import make_noise_source, noise_source_name
from .partition import label_histogram, partition
from .progress import progress_bar, round_line, write_line
from .resume import ResumeError, check_ledger, config_differences, ledger_pin
from .rundir import RunDir, config_hash
from .sb_init import apply_sign_svd, gradient_sum

__all__ = ["Federation", "run", "RunError"]


class RunError(UserError, RuntimeError):
    """The run cannot start or continue as asked."""


@dataclass
class Setup:
    clients: list[Client]
    eval_data: TensorData
    public: TensorData | None


@dataclass
class _Round:
    """What step 2 of one round produced."""

    payloads: list[Tensors] = field(default_factory=list)
    views: list[Tensors] = field(default_factory=list)
    specs: list[ClientSpec] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    faulty: list[dict[str, str]] = field(default_factory=list)
    up: int = 0
    down: int = 0
    interrupted: bool = False

    def add(self, client: Client, payload: Tensors, view: Tensors, loss: float, weighting: str):
        self.payloads.append(payload)
        self.views.append(view)
        self.specs.append(client.spec)
        self.weights.append(client.spec.num_examples if weighting == "shard_size" else 1.0)
        self.losses.append(loss)
        self.up += sum(t.numel() * t.element_size() for t in payload.values())


@dataclass
class RunState:
    """Everything a checkpoint restores, saved and loaded whole."""

    round: int
    state: Tensors
    history: list[dict[str, Any]]
    bytes_up: int = 0
    bytes_down: int = 0
    faulty: list[dict[str, Any]] = field(default_factory=list)
    stopped_reason: str = "completed"

    @classmethod
    def start(cls, state: Tensors) -> RunState:
        return cls(0, state, [])

    @classmethod
    def load(cls, ckpt: dict[str, Any]) -> RunState:
        return cls(
            ckpt["round"],
            ckpt["state"],
            ckpt["history"],
            ckpt["bytes_up"],
            ckpt["bytes_down"],
            ckpt.get("faulty", []),
            ckpt.get("stopped_reason", "completed"),
        )

    def advance(self, rnd: int, state: Tensors, row: dict[str, Any], done: _Round) -> None:
        self.round, self.state = rnd, state
        self.history.append(row)
        self.bytes_up += done.up
        self.bytes_down += done.down

    def payload(self, sigma: float, cfg_hash: str, cfg_dict: dict, pin: dict) -> dict[str, Any]:
        return {
            "round": self.round,
            "state": self.state,
            "history": self.history,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "faulty": self.faulty,
            "noise_multiplier": sigma,
            "config_hash": cfg_hash,
            "config": cfg_dict,
            "stopped_reason": self.stopped_reason,
            **pin,
        }


class Federation:
    """Builds everything a run needs; :meth:`run` executes the rounds."""

    def __init__(self, cfg: Experiment, out: str | Path, *, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.dir = RunDir(out)
        self.log = log
        self.method: Method = make_method(cfg.method, seed=cfg.seed)
        built = build_model(cfg.model, seed=cfg.seed)
        self.tokenizer = built.tokenizer
        self.setup = self._build_data()
        self.model = self.method.setup(built, train_head=cfg.model.train_head)
        self.prefix_layers = 0
        if cfg.model.cache_frozen_prefix and cfg.model.task == "classification":
            from .prefix_cache import install_prefix_cache

            may_train = set(self.method.trainable_names(1)) | set(self.method.trainable_names(2))
            self.prefix_layers = install_prefix_cache(self.model, may_train, built.pad_token_id)
            if self.prefix_layers:
                self._precompute_prefix()
        self.clients = self.setup.clients
        self.ledger: Ledger | None = None

    # ------------------------------------------------------------------ set-up
    def _precompute_prefix(self) -> None:
        from .prefix_cache import CachedPrefix

        prefix = next(m for m in self.model.modules() if isinstance(m, CachedPrefix))
        sets = [c.data for c in self.setup.clients] + [self.setup.eval_data]
        if self.setup.public is not None:
            sets.append(self.setup.public)
        prefix.precompute(d.input_ids for d in sets)

    def _build_data(self) -> Setup:
        cfg = self.cfg
        train, eval_data = load_data(cfg.data, cfg.model, seed=cfg.seed, tokenizer=self.tokenizer)
        public = None
        if getattr(cfg.method, "init", None) == "public":
            # Public data leaves the private pool: it must never also be a client's record.
            rng = np.random.default_rng(cfg.seed + 7919)
            perm = rng.permutation(len(train))
            k = max(1, int(cfg.method.init_public_fraction * len(train)))  # type: ignore[attr-defined]
            public, train = train.subset(perm[:k]), train.subset(np.sort(perm[k:]))
        shards = partition(train.class_labels, cfg.data, seed=cfg.seed, groups=train.groups)
        self.histogram = label_histogram(
            train.class_labels, shards, max(cfg.model.num_labels, int(train.class_labels.max()) + 1)
        )
        clients = []
        for i, idx in enumerate(shards):
            n = len(idx)
            if cfg.train.sampling_rate > 0:
                q = cfg.train.sampling_rate
                if q * n < 1:
                    raise ConfigError(
                        f"client {i} has {n} examples: an expected batch of q·n = {q * n:.2f} "
                        "is below 1. Raise `train.sampling_rate`, use fewer clients, or a larger "
                        "Dirichlet alpha."
                    )
            elif n < cfg.train.batch_size:
                raise ConfigError(
                    f"client {i} has {n} examples, fewer than `train.batch_size` = "
                    f"{cfg.train.batch_size}. Use fewer clients, a larger Dirichlet alpha, a "
                    "smaller batch size, or `train.sampling_rate`."
                )
            else:
                q = cfg.train.batch_size / n
            steps = (
                math.ceil(cfg.train.local_epochs / q)
                if cfg.train.local_epochs > 0
                else cfg.train.local_steps
            )
            rank = self.method.client_rank(i, n, [len(s) for s in shards])
            spec = ClientSpec(str(i), i, n, rank)
            clients.append(Client(spec, train.subset(idx), q, steps))
        left_out = (
            len(train) - sum(len(s) for s in shards)
            if cfg.data.partition.kind == "by_column"
            else 0
        )
        self.warnings = shard_warnings(
            cfg, [len(s) for s in shards], [c.sampling_rate for c in clients], left_out
        )
        return Setup(clients, eval_data, public)

    def _init_event(self) -> Event | None:
        if getattr(self.cfg.method, "init", None) == "private" and self.cfg.privacy.private:
            return Gaussian(self.cfg.method.init_noise_multiplier)  # type: ignore[attr-defined]
        return None

    def plan_noise(self) -> float:
        """σ given, or calibrated once so every client's planned spending over all planned
        rounds (plus a private init) stays within target_epsilon."""
        p = self.cfg.privacy
        if not p.private:
            return 0.0
        if p.noise_multiplier is not None:
            return float(p.noise_multiplier)
        rounds, init = self.cfg.server.rounds, self._init_event()
        # ε grows with q and with steps, so only Pareto-maximal (q, steps) pairs can bind.
        pairs = {(c.sampling_rate, c.steps) for c in self.clients}
        frontier = [
            a for a in pairs if not any(b != a and b[0] >= a[0] and b[1] >= a[1] for b in pairs)
        ]
        sigmas = []
        for q, steps in frontier:

            def plan(sigma: float, q: float = q, steps: int = steps) -> Event:
                one_round = dpsgd_event(noise_multiplier=sigma, sampling_rate=q, steps=steps)
                train = SelfComposed(one_round, rounds)
                return Composed((init, train)) if init is not None else train

            cal = noise_multiplier_for(
                target_epsilon=p.target_epsilon,
                delta=p.delta,
                make_event=plan,
                accountant=p.accountant,
            )
            sigmas.append(cal.noise_multiplier)
        return max(sigmas)

    def _fedsb_init(self, engine_loss, state_ready: bool) -> None:
        kind = getattr(self.cfg.method, "init", "random")
        if kind == "random" or state_ready:
            return
        m = self.cfg.method
        if kind == "public":
            assert self.setup.public is not None
            grads = gradient_sum(
                self.method,
                self.model,
                engine_loss,
                self.setup.public,
                clip_norm=None,
                noise_multiplier=None,
                noise_source=None,
            )
        else:
            p = self.cfg.privacy
            grads = None
            for c in self.clients:
                # write-ahead: the init release is recorded before the shard is read
                if p.private:
                    self.ledger.spend(
                        c.spec.cid, 0, "init", self._init_event(), budget=p.budget, delta=p.delta
                    )
                g = gradient_sum(
                    self.method,
                    self.model,
                    engine_loss,
                    c.data,
                    clip_norm=p.clip_norm,
                    noise_multiplier=m.init_noise_multiplier,  # type: ignore[attr-defined]
                    noise_source=make_noise_source(
                        p.secure_mode, self.cfg.seed, "sb_init_noise", c.spec.cid
                    ),
                )
                grads = g if grads is None else {k: grads[k] + g[k] for k in grads}
        apply_sign_svd(self.method, self.model, grads, step=m.init_scale)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ the loop
    def _load_resume(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to continue from, after every check that protects the ledger."""
        cfg = self.cfg
        if not resume:
            if self.dir.checkpoint.exists():
                raise RunError(
                    f"{self.dir.path} already holds a run. Pass --resume or another --out."
                )
            return None
        ckpt = self.dir.load_checkpoint()
        if ckpt is None:
            return None
        if ckpt["config_hash"] != config_hash(cfg):
            diff = config_differences(ckpt.get("config", {}), to_dict(cfg))
            raise RunError(
                f"{self.dir.path} was started with a different config; cannot resume. "
                f"Differing keys: {'; '.join(diff) or 'unknown (older checkpoint)'}."
            )
        try:
            check_ledger(
                ckpt,
                self.dir.ledger,
                accountant=cfg.privacy.accountant,
                private=cfg.privacy.private,
            )
        except ResumeError as exc:
            raise RunError(f"cannot resume {self.dir.path}: {exc}") from None
        return ckpt

    def _announce(self, sigma: float) -> None:
        p, cfg = self.cfg.privacy, self.cfg
        for line in self.warnings:
            self.log(f"warning: {line}")
        if not p.private:
            return
        how = (
            "given"
            if p.noise_multiplier is not None
            else f"calibrated to ε = {p.target_epsilon:g} over {cfg.server.rounds} rounds"
        )
        qs = [c.sampling_rate for c in self.clients]
        self.log(
            f"DP: σ = {sigma:.4f} ({how}), C = {p.clip_norm}, δ = {p.delta:g}, "
            f"accountant {p.accountant}; q per client {min(qs):.3f}-{max(qs):.3f}"
        )
        if not p.secure_mode:
            self.log(
                f"noise: seeded from seed = {cfg.seed} (in config.yaml), so anyone holding the "
                "config can reproduce and subtract it: a simulation, not a deployment. Set "
                "privacy.secure_mode=true for noise from OS entropy."
            )

    def _train_clients(self, rnd: int, state: Tensors, engine: Engine, sigma: float, stop):
        """Step 2 for every sampled client: budget check and write-ahead, then train."""
        p, method = self.cfg.privacy, self.method
        out = _Round()
        for client in self._sample(rnd):
            if stop.requested:
                out.interrupted = True
                return out
            cid = client.spec.cid
            if p.private:
                try:
                    self.ledger.spend(
                        cid,
                        rnd,
                        "train",
                        client.planned_event(sigma),
                        budget=p.budget,
                        delta=p.delta,
                    )
                except BudgetExceededError as err:
                    out.skipped.append(cid)
                    self.log(
                        f"round {rnd}: client {cid} skipped: this round would raise its ε from "
                        f"{err.current_epsilon:.4f} to {err.planned_epsilon:.4f}, above the "
                        f"budget {err.budget:g}."
                    )
                    continue
            view = method.client_view(state, client.spec, rnd)
            try:
                res = client.train(engine, rnd, view)
                payload = method.payload(res.trained, view, client.spec, rnd)
                bad = [k for k, t in payload.items() if not bool(torch.isfinite(t).all())]
                if bad:
                    raise FloatingPointError(f"non-finite payload tensor {bad[0]}")
            except Exception as exc:  # noqa: BLE001 - one client's failure must not end the run
                out.faulty.append({"cid": cid, "error": f"{type(exc).__name__}: {exc}"})
                self.log(
                    f"round {rnd}: client {cid} failed ({type(exc).__name__}: {exc}); left out "
                    "of the aggregate. Its recorded spend stays counted."
                )
                continue
            out.add(client, payload, {**view, **res.trained}, res.loss, self.cfg.method.weighting)
            out.down += method.download_numel(state, client.spec, rnd) * 4
        return out

    def run(
        self, *, resume: bool = False, progress: bool = True, until_round: int | None = None
    ) -> dict[str, Any]:
        """Run (or resume) the rounds; ``until_round`` stops early after that round, cleanly
        checkpointed, so a later ``resume=True`` continues (time-sliced jobs, tests)."""
        cfg, method, p = self.cfg, self.method, self.cfg.privacy
        ckpt = self._load_resume(resume)
        self.dir.create(cfg)
        if p.diagnostics:
            self._write_histogram()
        self.ledger = Ledger(self.dir.ledger, accountant=p.accountant) if p.private else None
        sigma = ckpt["noise_multiplier"] if ckpt else self.plan_noise()
        from .client import LOSSES

        self._fedsb_init(LOSSES[cfg.model.task], state_ready=ckpt is not None)
        engine = Engine(cfg, method, self.model, noise_multiplier=sigma)
        st = RunState.start(method.init_state()) if ckpt is None else RunState.load(ckpt)
        if ckpt is not None:
            self.dir.rewrite_metrics(st.history)
            for row in st.history:  # show what was already done
                self.log(round_line(row, cfg.server.rounds) + " (from checkpoint)")
        self._announce(sigma)
        t_run = time.perf_counter()
        last = cfg.server.rounds if until_round is None else min(until_round, cfg.server.rounds)
        reason = st.stopped_reason
        with StopRequest() as stop:
            bar = progress_bar(range(st.round + 1, last + 1), progress and reason == "completed")
            for rnd in bar if reason == "completed" else ():
                t0 = time.perf_counter()
                # 1) sample clients, 2) budget + write-ahead, train each
                done = self._train_clients(rnd, st.state, engine, sigma, stop)
                st.faulty += [{"round": rnd, **f} for f in done.faulty]
                if done.interrupted or stop.requested:
                    reason = "interrupted"
                    self._say_interrupted(rnd, stop.requested)
                    break
                if not done.payloads:
                    reason = "all_clients_failed" if done.faulty else "budget_exhausted"
                    self.log(f"round {rnd}: no client trained ({reason}); stopping.")
                    break
                # 4) aggregate
                state = method.aggregate(done.payloads, done.weights, st.state, done.specs, rnd)
                # the exactness gap is a measured quantity (FedIT's is > 0 with non-IID data)
                gap = aggregation_gap(method, done.views, done.specs, done.weights, state)
                # 5) evaluate and log
                row = self._round_row(rnd, done, state, engine, gap, time.perf_counter() - t0)
                st.advance(rnd, state, row, done)
                self.dir.append_metrics(row)
                write_line(bar, progress, self.log, round_line(row, cfg.server.rounds))
                # 6) checkpoint, pinning the ledger it saw
                self.dir.save_checkpoint(
                    st.payload(sigma, config_hash(cfg), to_dict(cfg), ledger_pin(self.ledger))
                )
        if reason == "completed" and st.round < cfg.server.rounds:
            reason = "until_round"
        return self._summarise(st, sigma, reason, time.perf_counter() - t_run)

    def _say_interrupted(self, rnd: int, signame: str | None) -> None:
        self.log(
            f"interrupted ({signame or 'stop requested'}) during round {rnd}: stopped before "
            f"finishing it. `--resume` continues from round {rnd}. The spend recorded for round "
            f"{rnd} stays counted: the ledger is written before a client touches its data, and "
            "the interrupted clients may have computed noisy updates from it."
        )

    def _round_row(self, rnd, done, state, engine, gap, seconds) -> dict[str, Any]:
        p = self.cfg.privacy
        metrics = self._evaluate(engine, state)
        eps = self.ledger.epsilons(delta=p.delta) if self.ledger is not None else {}
        diag = p.diagnostics and bool(done.losses)
        return {
            "round": rnd,
            "clients": len(done.payloads),
            "skipped": done.skipped,
            "faulty": [f["cid"] for f in done.faulty],
            "train_loss": float(np.nanmean(done.losses)) if diag else math.nan,
            **{f"eval_{k}": v for k, v in metrics.items()},
            "max_epsilon": max(eps.values(), default=0.0) if p.private else math.inf,
            "aggregation_gap": gap,
            "bytes_up": done.up,
            "bytes_down": done.down,
            "seconds": seconds,
        }

    def _write_histogram(self) -> None:
        import json

        from .plots import plot_label_histogram

        names = list(self.cfg.data.label_names) or [str(c) for c in range(self.histogram.shape[1])]
        (self.dir.path / "label_histogram.json").write_text(
            json.dumps({"labels": names, "clients": self.histogram.tolist()}) + "\n"
        )
        plot_label_histogram(self.histogram, self.dir.plots, label_names=names)

    def _sample(self, rnd: int) -> list[Client]:
        k = self.cfg.server.clients_per_round
        if k <= 0 or k >= len(self.clients):
            return list(self.clients)
        g = derive_generator(self.cfg.seed, "clients", rnd)
        idx = torch.randperm(len(self.clients), generator=g)[:k].sort().values
        return [self.clients[int(i)] for i in idx]

    def _evaluate(self, engine: Engine, state: Tensors) -> dict[str, float]:
        engine.load(self.method.eval_view(state))
        engine.set_scaling(self.method.scaling(None))
        return evaluate(
            self.model,
            self.setup.eval_data,
            task=self.cfg.model.task,
            num_labels=self.cfg.model.num_labels,
            label_token_ids=self._label_token_ids(),
        )

    def _label_token_ids(self) -> list[int] | None:
        names = self.cfg.data.label_names
        if self.cfg.model.task != "causal_lm" or not names or self.tokenizer is None:
            return None
        return [self.tokenizer(f" {w}", add_special_tokens=False)["input_ids"][0] for w in names]

    def _summarise(self, st: RunState, sigma: float, stopped_reason: str, seconds: float):
        cfg, p = self.cfg, self.cfg.privacy
        history = st.history
        eps = self.ledger.epsilons(delta=p.delta) if self.ledger is not None else {}
        answered = sorted(self.ledger.answered_by) if self.ledger is not None else []
        final = {
            k[5:]: v for k, v in (history[-1] if history else {}).items() if k.startswith("eval_")
        }
        summary = {
            "method": cfg.method.name,
            "rounds_planned": cfg.server.rounds,
            "rounds_completed": len(history),
            "stopped_reason": stopped_reason,
            "private": p.private,
            "max_epsilon": max(eps.values(), default=0.0) if p.private else math.inf,
            "epsilon_per_client": eps,
            "target_epsilon": p.target_epsilon if p.private else None,
            "delta": p.delta,
            "accountant": p.accountant,
            # the backends that really answered (a PRV failure falls back to PLD)
            "accountant_used": "+".join(answered)
            if answered
            else (p.accountant if p.private else None),
            "noise_source": noise_source_name(p.secure_mode) if p.private else None,
            "noise_multiplier": sigma,
            "clip_norm": p.clip_norm,
            "final": final,
            "faulty_clients": st.faulty,
            "warnings": self.warnings,
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
                for c in self.clients
            ],
        }
        self.dir.write_summary(summary)
        from .plots import plot_run

        plot_run(
            history,
            self.dir.plots,
            title=f"{cfg.name}: {cfg.method.name}, " + _privacy_title(p, sigma),
        )
        torch.save(st.state, self.dir.path / "checkpoint" / "final_state.pt")
        return summary


def _privacy_title(p, sigma: float) -> str:
    if not p.private:
        return "non-private"
    if p.target_epsilon is None:  # σ given, no budget: ε is whatever the ledger says
        return f"σ = {sigma:.3g}, δ = {p.delta:g}"
    return f"ε ≤ {p.target_epsilon:g}, δ = {p.delta:g}"


def run(
    cfg: Experiment,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    until_round: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run a federation described by ``cfg`` into run directory ``out``; returns the summary."""
    return Federation(cfg, out, log=log).run(
        resume=resume, progress=progress, until_round=until_round
    )
