"""A client: one data owner's shard, its DP settings and its budget.

``Client.train(broadcast) -> Reply``: the client plans its release for the round, spends it
through its own budget (budget check, then the write-ahead record, before the shard is read),
trains on the shared trainer and replies with the method's payload, its metrics and the event it
spent. The server never sees more than the reply.
"""

from __future__ import annotations

import secrets
import sys
import traceback
from dataclasses import dataclass

import torch

from accounting import BudgetExceededError, Event, Ledger, dpsgd_event

from ..data.tensors import TensorData
from ..methods.base import ClientSpec
from ..wire import Broadcast, Reply
from .contract import RELEASABLE
from .trainer import Trainer

__all__ = ["Client", "Budget"]


@dataclass
class Budget:
    """A data owner's ledger and ε budget (per client; one shared file in a simulation)."""

    ledger: Ledger
    epsilon: float
    delta: float

    def spend(self, client: str, round_idx: int, scope: str, event: Event) -> None:
        self.ledger.spend(client, round_idx, scope, event, budget=self.epsilon, delta=self.delta)


@dataclass
class Client:
    """One data shard with its DP-SGD settings; holds no model (it trains on ``trainer``)."""

    spec: ClientSpec
    data: TensorData | None  # None on a server whose clients train elsewhere (deployment)
    sampling_rate: float  # q = expected batch / shard size
    steps: int  # local DP-SGD steps per round
    trainer: Trainer | None = None
    budget: Budget | None = None  # None: non-private (nothing to spend)
    # plain reply metrics allowed to leave (outside DP): all in a simulation, where the server
    # is the same person; a data owner's node keeps its contract's (by default none)
    release: frozenset[str] = frozenset(RELEASABLE)

    @property
    def expected_batch(self) -> float:
        return self.sampling_rate * self.spec.num_examples

    def planned_event(self, noise_multiplier: float) -> Event:
        return dpsgd_event(
            noise_multiplier=noise_multiplier, sampling_rate=self.sampling_rate, steps=self.steps
        )

    def spend(self, round_idx: int, scope: str, event: Event) -> None:
        """Budget check and write-ahead record of ``event``; raises BudgetExceededError."""
        if self.budget is not None:
            self.budget.spend(self.spec.cid, round_idx, scope, event)

    def train(self, broadcast: Broadcast) -> Reply:
        rnd, cid = broadcast.round, self.spec.cid
        if self.trainer.private and self.budget is None:
            # every use of private data is recorded first: no ledger, no training
            raise RuntimeError(f"client {cid} trains privately but holds no budget (ledger).")
        # the broadcast may set only the method's tensors (checked before anything is spent)
        problem = self.trainer.refuse_load(broadcast.tensors)
        if problem is not None:
            return Reply(rnd, cid, "skipped", error=problem[0])
        event = None
        if self.budget is not None:
            event = self.planned_event(broadcast.noise_multiplier)
            try:
                self.spend(rnd, "train", event)
            except BudgetExceededError as err:
                return Reply(rnd, cid, "skipped", metrics={
                    "current_epsilon": err.current_epsilon,
                    "planned_epsilon": err.planned_epsilon,
                    "budget": err.budget,
                }, error="budget")  # fmt: skip
        try:
            local = self.trainer.train_local(
                self, rnd, broadcast.tensors, noise_multiplier=broadcast.noise_multiplier
            )
            payload = self.trainer.method.payload(local.trained, broadcast.tensors, self.spec, rnd)
            bad = [k for k, t in payload.items() if not bool(torch.isfinite(t).all())]
            if bad:
                raise FloatingPointError(f"non-finite payload tensor {bad[0]}")
        except Exception:  # noqa: BLE001 - one client's failure must not end the run
            # the reply carries a code only: an error's text can depend on the records (a
            # membership oracle outside DP); the details stay here, under an id
            fid = secrets.token_hex(4)
            print(f"client {cid} round {rnd} failed (failure id {fid}):\n"
                  f"{traceback.format_exc()}", file=sys.stderr, flush=True)  # fmt: skip
            return Reply(rnd, cid, "failed", event=event, error="failed:internal")
        plain = {"loss": local.loss, "examples_seen": local.examples_seen,
                 "seconds": local.seconds}  # fmt: skip
        metrics = {"steps": local.steps, **{k: v for k, v in plain.items() if k in self.release}}
        return Reply(rnd, cid, "ok", payload, metrics, event)
