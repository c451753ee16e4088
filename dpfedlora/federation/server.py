"""The server: the round loop of DESIGN.md, readable on one screen (:meth:`Federation.run`).

One round:
  1 sample clients (seeded)
  2 per client: Broadcast -> client: planned event -> its budget's ledger.spend (budget check
    and write-ahead record) -> train -> Reply
  3 the clients run in-process (:class:`LocalClients`), in other processes
    (:mod:`.processes`) or anywhere else that takes a Broadcast and returns a Reply
  4 method.aggregate(replies) -> new global state (faulty replies are left out; their spend
    stays counted)
  5 evaluate; log loss, metrics, ε and attack risk (TPR at FPR) per client so far, bytes
    up/down (metrics.jsonl, the progress line and the logging callbacks)
  6 checkpoint the RunState atomically (the ledger is already durable)

Every random draw comes from a generator derived from (seed, purpose, round, client), so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from accounting import Ledger

from ..client import Budget, Client
from ..client.grad_sample import is_auto
from ..config import Experiment, to_dict
from ..errors import UserError
from ..evaluate import evaluate
from ..interrupts import StopRequest
from ..methods.aggregation import Tensors
from ..methods.base import ClientSpec, aggregation_gap
from ..noise import derive_generator
from ..progress import progress_bar, round_line, write_line
from ..wire import Broadcast, Reply
from .callbacks import Callback, CallbackList, check_available, make_callbacks
from .planning import calibration_note, plan_noise
from .resume import ResumeError, check_ledger, differences_from, ledger_pin
from .risk import RiskView, privacy_fields
from .rundir import RunDir, config_hash
from .setup import Setup, build_setup
from .state import RunState
from .summary import write_summary

__all__ = ["Federation", "LocalClients", "Clients", "RunError", "run"]


class RunError(UserError, RuntimeError):
    """The run cannot start or continue as asked."""


class Clients(Protocol):
    """Where clients run. ``mirrors``: the clients hold their own ledgers, so the server keeps
    a mirror of the events named in their replies.

    ``train_all`` takes the round's broadcasts lazily and yields one reply per broadcast, in
    order; it stops early when ``stop()`` is true. In-process clients train one after the other
    (:func:`train_each`); a deployment sends them all at once and waits for the replies."""

    mirrors: bool

    def train_all(
        self, broadcasts: Iterable[Broadcast], stop: Callable[[], bool]
    ) -> Iterator[Reply]: ...

    def close(self) -> None: ...


def train_each(
    train: Callable[[Broadcast], Reply], broadcasts: Iterable[Broadcast], stop: Callable[[], bool]
) -> Iterator[Reply]:
    """One client after the other, building each broadcast only when its turn comes (a
    10,000-client round never holds 10,000 views)."""
    for b in broadcasts:
        if stop():
            return
        yield train(b)


class LocalClients:
    """Clients in this process, sharing the run's ledger and the trainer."""

    mirrors = False

    def __init__(self, clients: list[Client]) -> None:
        self.by_id = {c.spec.cid: c for c in clients}

    def train(self, broadcast: Broadcast) -> Reply:
        return self.by_id[broadcast.client].train(broadcast)

    def train_all(self, broadcasts, stop) -> Iterator[Reply]:
        return train_each(self.train, broadcasts, stop)

    def close(self) -> None:
        pass


@dataclass
class _Round:
    """The replies of one round, sorted by what the server does with them."""

    good: list[tuple[Reply, ClientSpec, Tensors]] = field(default_factory=list)  # (reply, view)
    skipped: list[str] = field(default_factory=list)
    faulty: list[dict[str, str]] = field(default_factory=list)
    down: int = 0
    interrupted: bool = False

    @property
    def up(self) -> int:
        return sum(r.bytes_up for r, _, _ in self.good)


class Federation:
    """Builds everything a run needs (:func:`build_setup`); :meth:`run` executes the rounds."""

    def __init__(
        self,
        cfg: Experiment,
        out: str | Path,
        *,
        log: Callable[[str], None] = print,
        clients: Clients | None = None,
        setup: Setup | None = None,
        callbacks: dict[str, Callback] | None = None,
    ):
        check_available(cfg)  # a tracker switched on but not installed: before any set-up
        self.cfg = cfg
        self.dir = RunDir(out)
        self.log = log
        self.setup: Setup = setup if setup is not None else build_setup(cfg)
        self.method = self.setup.method
        self.clients = self.setup.clients
        self.remote = clients or LocalClients(self.clients)
        self.ledger: Ledger | None = None
        self.risk: RiskView | None = None
        # the trackers cfg.logging enables are added when the run directory exists
        self.callbacks = CallbackList(callbacks or {}, log=log)

    def run(
        self, *, resume: bool = False, progress: bool = True, until_round: int | None = None
    ) -> dict[str, Any]:
        """Run (or resume) the rounds; ``until_round`` stops early after that round, cleanly
        checkpointed, so a later ``resume=True`` continues (time-sliced jobs, tests)."""
        cfg, method = self.cfg, self.method
        st = self._begin(resume)
        last = cfg.server.rounds if until_round is None else min(until_round, cfg.server.rounds)
        t_run = time.perf_counter()
        with StopRequest() as stop:
            bar = progress_bar(range(st.round + 1, last + 1), progress and st.running)
            for rnd in bar if st.running else ():
                # checked only here, between rounds, so a pause never abandons a round's spend;
                # and only once a round is checkpointed (a fresh run's set-up, say a private
                # initialisation, is then never redone on resume)
                if st.round > 0 and (stop.pause or self.dir.take_pause_request()):
                    st.stopped_reason = "paused"
                    self._say_paused(rnd)
                    break
                t0 = time.perf_counter()
                # 1) sample clients; 2-3) broadcast, each client spends, trains and replies
                with self._ledger_group():  # durable before anything of the round leaves
                    done = self._exchange(rnd, self.sample(rnd), st, stop)
                st.faulty += [{"round": rnd, **f} for f in done.faulty]
                if done.interrupted or stop.requested:
                    st.stopped_reason = "interrupted"
                    self._say_interrupted(rnd, stop.requested)
                    break
                if not done.good:
                    st.stopped_reason = "all_clients_failed" if done.faulty else "budget_exhausted"
                    self.log(f"round {rnd}: no client trained ({st.stopped_reason}); stopping.")
                    break
                # 4) aggregate the good replies
                replies, specs, views = zip(*done.good)
                payloads = [r.payload for r in replies]
                weights = [method.weight(s) for s in specs]
                state = method.aggregate(payloads, weights, st.state, specs, rnd)
                # the exactness gap is measured (FedIT's is > 0 with non-IID data)
                updates = [method.client_update(v, r.payload, s) for r, s, v in done.good]
                gap = aggregation_gap(method, updates, specs, weights, state)
                # 5) evaluate and log
                row = self._round_row(rnd, done, state, gap, time.perf_counter() - t0)
                st.advance(rnd, state, row)
                self._log_round(row, bar, progress)
                # 6) checkpoint, pinning the ledger it saw
                st.save(self.dir, ledger_pin(self.ledger))
        if st.running and st.round < cfg.server.rounds:
            st.stopped_reason = "until_round"
        if st.running:  # a pause asked for after the last round would stop a later --resume
            self.dir.take_pause_request()
        self.remote.close()
        summary = write_summary(
            self.dir, cfg, self.setup, st, self.ledger, time.perf_counter() - t_run
        )
        self.callbacks.on_run_end(summary)
        return summary

    # ------------------------------------------------------------------ start
    def _begin(self, resume: bool) -> RunState:
        """Checks, the run directory and ledger, σ, the method's set-up: the state to run."""
        cfg, p = self.cfg, self.cfg.privacy
        if self.remote.mirrors and self.method.init_event(p.private) is not None:
            raise RunError(
                f"method {cfg.method.name!r} is configured with a private, data-dependent "
                "initialisation that reads every shard before round 1; that needs in-process "
                "clients. Use a data-independent or public initialisation."
            )
        ckpt = self._load_resume(resume)
        self.dir.create(cfg)
        if p.diagnostics:
            self._write_histogram()
        self.ledger = Ledger(self.dir.ledger, accountant=p.accountant) if p.private else None
        self.risk = RiskView(self.ledger, delta=p.delta) if self.ledger is not None else None
        for name, cb in make_callbacks(cfg, self.dir.path).items():
            self.callbacks.add(name, cb)
        self.callbacks.on_run_start(cfg)
        for c in self.clients:
            c.budget = Budget(self.ledger, p.budget, p.delta) if self.ledger is not None else None
        if ckpt is not None:
            st = RunState.from_dict(ckpt)
            self.dir.rewrite_metrics(st.history)
            for row in st.history:  # show what was already done
                self.log(round_line(row, cfg.server.rounds) + " (from checkpoint)")
        else:
            sigma = self.plan_noise()
            self.method.prepare(self.setup)
            st = RunState(0, self.method.init_state(), sigma, config_hash(cfg), to_dict(cfg))
        self._announce(st.noise_multiplier)
        return st

    def _ledger_group(self):
        """One fsync for the round's releases (see :meth:`Ledger.group`); none without DP."""
        return self.ledger.group() if self.ledger is not None else contextlib.nullcontext()

    def plan_noise(self) -> float:
        return plan_noise(
            self.cfg.privacy,
            rounds=self.cfg.server.rounds,
            rates_and_steps=[(c.sampling_rate, c.steps) for c in self.clients],
            init=self.method.init_event(self.cfg.privacy.private),
        )

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
        diff = []
        if ckpt["config_hash"] != config_hash(cfg):
            diff = differences_from(ckpt.get("config", {}), cfg)
        if ckpt["config_hash"] != config_hash(cfg) and (diff or not ckpt.get("config")):
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
        for line in self.setup.warnings:
            self.log(f"warning: {line}")
        if not p.private:
            return
        how = calibration_note(p, rounds=cfg.server.rounds)  # given, or to ε, or to attack risk
        qs = [c.sampling_rate for c in self.clients]
        self.log(
            f"DP: σ = {sigma:.4f} ({how}), C = {p.clip_norm}, δ = {p.delta:g}, "
            f"accountant {p.accountant}; q per client {min(qs):.3f}-{max(qs):.3f}"
        )
        plan = self.setup.trainer.plan
        chosen = " (auto)" if is_auto(p.grad_sample_mode) else ""
        self.log(
            f"memory: grad-sample mode {plan.mode}{chosen}, physical batch {plan.batch} x "
            f"{plan.seq_len} tokens, predicted peak {plan.peak() / 1e9:.2f} GB of "
            f"{plan.free / 1e9:.2f} GB free on {plan.device}"
        )
        if not p.secure_mode:
            self.log(
                f"noise: seeded from seed = {cfg.seed} (in config.yaml), so anyone holding the "
                "config can reproduce and subtract it: a simulation, not a deployment. Set "
                "privacy.secure_mode=true for noise from OS entropy."
            )

    # ------------------------------------------------------------------ one round
    def sample(self, rnd: int) -> list[Client]:
        """Step 1: the round's clients (all, or ``server.clients_per_round`` seeded)."""
        k = self.cfg.server.clients_per_round
        if k <= 0 or k >= len(self.clients):
            return list(self.clients)
        g = derive_generator(self.cfg.seed, "clients", rnd)
        idx = torch.randperm(len(self.clients), generator=g)[:k].sort().values
        return [self.clients[int(i)] for i in idx]

    def _exchange(self, rnd: int, sampled: list[Client], st: RunState, stop) -> _Round:
        """Steps 2-3: one Broadcast per sampled client, its Reply sorted."""
        method, out = self.method, _Round()
        views: dict[str, Tensors] = {}

        def broadcasts() -> Iterator[Broadcast]:
            for client in sampled:
                views[client.spec.cid] = method.client_view(st.state, client.spec, rnd)
                yield Broadcast(rnd, client.spec.cid, views[client.spec.cid], st.noise_multiplier)

        replies = self.remote.train_all(broadcasts(), lambda: bool(stop.requested))
        for client, reply in zip(sampled, replies):
            spec = client.spec
            view = views.pop(spec.cid)
            if self.remote.mirrors and reply.event is not None and self.ledger is not None:
                self.ledger.record(spec.cid, rnd, "train", reply.event)
            if reply.status == "skipped":
                out.skipped.append(spec.cid)
                self.log(f"round {rnd}: client {spec.cid} skipped: {_skip_reason(reply)}")
            elif reply.status == "failed":
                out.faulty.append({"cid": spec.cid, "error": reply.error})
                self.log(
                    f"round {rnd}: client {spec.cid} failed ({reply.error}); left out of the "
                    "aggregate. Its recorded spend stays counted."
                )
            else:
                out.good.append((reply, spec, view))
                out.down += method.download_numel(st.state, spec, rnd) * 4
        answered = len(out.good) + len(out.skipped) + len(out.faulty)
        out.interrupted = answered < len(sampled)
        return out

    def _round_row(self, rnd: int, done: _Round, state: Tensors, gap: float, seconds: float):
        p = self.cfg.privacy
        metrics = self.evaluate(state)
        # a node releases its loss only if its owner allows it (outside DP)
        losses = [r.metrics["loss"] for r, _, _ in done.good if "loss" in r.metrics]
        return {
            "round": rnd,
            "clients": len(done.good),
            "skipped": done.skipped,
            "faulty": [f["cid"] for f in done.faulty],
            "train_loss": float(np.nanmean(losses)) if p.diagnostics and losses else math.nan,
            **{f"eval_{k}": v for k, v in metrics.items()},
            # max ε, ε and TPR at each FPR for every client (risk.py; non-private: ∞ and 1)
            **privacy_fields(self.risk, [c.spec.cid for c in self.clients]),
            "aggregation_gap": gap,
            "bytes_up": done.up,
            "bytes_down": done.down,
            "seconds": seconds,
        }

    def _log_round(self, row: dict[str, Any], bar, progress: bool) -> None:
        """Step 5's outputs: metrics.jsonl (durable first), the progress line, the trackers."""
        self.dir.append_metrics(row)
        write_line(bar, progress, self.log, round_line(row, self.cfg.server.rounds))
        self.callbacks.on_round(row)

    def evaluate(self, state: Tensors) -> dict[str, float]:
        """The global model's held-out metrics (step 5)."""
        trainer = self.setup.trainer
        trainer.load(self.method.eval_view(state))
        trainer.set_scaling(self.method.scaling(None))
        return evaluate(
            self.setup.model,
            self.setup.eval_data,
            task=self.cfg.model.task,
            num_labels=self.cfg.model.num_labels,
            label_token_ids=self.setup.label_token_ids(),
            calibration=self.setup.calibration_inputs(),
        )

    def _say_paused(self, rnd: int) -> None:
        self.log(
            f"paused before round {rnd} (SIGUSR1 or {self.dir.pause_file.name} file): every "
            f"finished round is checkpointed and nothing spent is lost. `--resume` continues "
            f"with round {rnd}."
        )

    def _say_interrupted(self, rnd: int, signame: str | None) -> None:
        self.log(
            f"interrupted ({signame or 'stop requested'}) during round {rnd}: stopped before "
            f"finishing it. `--resume` continues from round {rnd}. The spend recorded for round "
            f"{rnd} stays counted: the ledger is written before a client touches its data, and "
            "the interrupted clients may have computed noisy updates from it."
        )

    def _write_histogram(self) -> None:
        from ..experiments.plots import plot_label_histogram

        hist = self.setup.histogram
        names = list(self.cfg.data.label_names) or [str(c) for c in range(hist.shape[1])]
        (self.dir.path / "label_histogram.json").write_text(
            json.dumps({"labels": names, "clients": hist.tolist()}) + "\n"
        )
        plot_label_histogram(hist, self.dir.plots, label_names=names)


def _skip_reason(reply: Reply) -> str:
    m = reply.metrics
    if {"current_epsilon", "planned_epsilon", "budget"} <= set(m):
        return (
            f"this round would raise its ε from {m['current_epsilon']:.4f} to "
            f"{m['planned_epsilon']:.4f}, above the budget {m['budget']:g}."
        )
    return reply.error or "its owner refused the round."


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
