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
from dataclasses import dataclass
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

from .aggregation import Tensors
from .client import Client, Engine, derive_generator
from .config import ConfigError, Experiment
from .data import TensorData, load_data
from .evaluate import evaluate
from .methods import make_method
from .methods.base import ClientSpec, Method, aggregation_gap
from .models import build_model
from .partition import label_histogram, partition
from .progress import progress_bar, round_line, write_line
from .rundir import RunDir, config_hash
from .sb_init import apply_sign_svd, gradient_sum

__all__ = ["Federation", "run", "RunError"]


class RunError(RuntimeError):
    """The run cannot start or continue as asked."""


@dataclass
class Setup:
    clients: list[Client]
    eval_data: TensorData
    public: TensorData | None


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
                generator=None,
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
                    generator=derive_generator(self.cfg.seed, "sb_init_noise", c.spec.cid),
                )
                grads = g if grads is None else {k: grads[k] + g[k] for k in grads}
        apply_sign_svd(self.method, self.model, grads, step=m.init_scale)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ the loop
    def run(
        self, *, resume: bool = False, progress: bool = True, until_round: int | None = None
    ) -> dict[str, Any]:
        """Run (or resume) the rounds; ``until_round`` stops early after that round, cleanly
        checkpointed, so a later ``resume=True`` continues (time-sliced jobs, tests)."""
        cfg, method = self.cfg, self.method
        ckpt = self.dir.load_checkpoint() if resume else None
        if not resume and self.dir.checkpoint.exists():
            raise RunError(f"{self.dir.path} already holds a run. Pass --resume or another --out.")
        if ckpt is not None and ckpt["config_hash"] != config_hash(cfg):
            raise RunError(f"{self.dir.path} was started with a different config; cannot resume.")
        self.dir.create(cfg)
        self._write_histogram()
        self.ledger = Ledger(self.dir.ledger, accountant=cfg.privacy.accountant)
        p = cfg.privacy
        sigma = ckpt["noise_multiplier"] if ckpt else self.plan_noise()
        from .client import LOSSES

        self._fedsb_init(LOSSES[cfg.model.task], state_ready=ckpt is not None)
        state: Tensors = method.init_state()
        engine = Engine(cfg, method, self.model, noise_multiplier=sigma)
        start, history, bytes_up, bytes_down = 1, [], 0, 0
        stopped_reason = "completed"
        if ckpt is not None:
            state = ckpt["state"]
            start = ckpt["round"] + 1
            history = ckpt["history"]
            bytes_up, bytes_down = ckpt["bytes_up"], ckpt["bytes_down"]
            stopped_reason = ckpt.get("stopped_reason", "completed")
            self.dir.rewrite_metrics(history)
            for row in history:  # show what was already done
                self.log(round_line(row, cfg.server.rounds) + " (from checkpoint)")
        if p.private:
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
        t_run = time.perf_counter()
        last = cfg.server.rounds if until_round is None else min(until_round, cfg.server.rounds)
        rounds = range(start, last + 1) if stopped_reason == "completed" else range(0)
        bar = progress_bar(rounds, progress)
        for rnd in bar:
            t0 = time.perf_counter()
            # 1) sample clients
            chosen = self._sample(rnd)
            payloads, weights, specs, losses, skipped, views = [], [], [], [], [], []
            round_up = round_down = 0
            for client in chosen:
                # 2) budget check + write-ahead record
                if p.private:
                    try:
                        self.ledger.spend(
                            client.spec.cid,
                            rnd,
                            "train",
                            client.planned_event(sigma),
                            budget=p.budget,
                            delta=p.delta,
                        )
                    except BudgetExceededError as err:
                        skipped.append(client.spec.cid)
                        self.log(f"round {rnd}: skipping client {client.spec.cid}: {err}")
                        continue
                # 3) local training on the client's view
                view = method.client_view(state, client.spec, rnd)
                res = client.train(engine, rnd, view)
                payload = method.payload(res.trained, view, client.spec, rnd)
                payloads.append(payload)
                views.append({**view, **res.trained})
                specs.append(client.spec)
                weights.append(
                    client.spec.num_examples if cfg.method.weighting == "shard_size" else 1.0
                )
                losses.append(res.loss)
                round_up += sum(t.numel() * t.element_size() for t in payload.values())
                round_down += method.download_numel(state, client.spec, rnd) * 4
            if not payloads:
                stopped_reason = "budget_exhausted"
                self.log(f"round {rnd}: no client can train within the budget; stopping.")
                break
            # 4) aggregate
            state = method.aggregate(payloads, weights, state, specs, rnd)
            # the exactness gap is a measured quantity (FedIT's is > 0 with heterogeneous data)
            gap = aggregation_gap(method, views, specs, weights, state)
            bytes_up += round_up
            bytes_down += round_down
            # 5) evaluate and log
            metrics = self._evaluate(engine, state)
            eps = self.ledger.epsilons(delta=p.delta) if p.private else {}
            row = {
                "round": rnd,
                "clients": len(payloads),
                "skipped": skipped,
                "train_loss": float(np.nanmean(losses)) if losses else math.nan,
                **{f"eval_{k}": v for k, v in metrics.items()},
                "max_epsilon": max(eps.values(), default=0.0) if p.private else math.inf,
                "aggregation_gap": gap,
                "bytes_up": round_up,
                "bytes_down": round_down,
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            self.dir.append_metrics(row)
            write_line(bar, progress, self.log, round_line(row, cfg.server.rounds))
            # 6) checkpoint
            self.dir.save_checkpoint(
                {
                    "round": rnd,
                    "state": state,
                    "history": history,
                    "bytes_up": bytes_up,
                    "bytes_down": bytes_down,
                    "noise_multiplier": sigma,
                    "config_hash": config_hash(cfg),
                    "stopped_reason": "completed",
                }
            )
        return self._summarise(
            state, history, sigma, stopped_reason, bytes_up, bytes_down, time.perf_counter() - t_run
        )

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

    def _summarise(
        self, state, history, sigma, stopped_reason, up, down, seconds
    ) -> dict[str, Any]:
        cfg, p = self.cfg, self.cfg.privacy
        eps = self.ledger.epsilons(delta=p.delta) if p.private else {}
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
            "noise_multiplier": sigma,
            "clip_norm": p.clip_norm,
            "final": final,
            "bytes_up": up,
            "bytes_down": down,
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
            title=f"{cfg.name}: {cfg.method.name}, "
            + (f"ε ≤ {p.target_epsilon:g}, δ = {p.delta:g}" if p.private else "non-private"),
        )
        torch.save(state, self.dir.path / "checkpoint" / "final_state.pt")
        return summary


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
