"""A client: one data owner's shard, its DP settings and its budget.

``Client.train(broadcast) -> Reply``: the client plans its release for the round, spends it
through its own budget (budget check, then the write-ahead record, before the shard is read),
trains on the shared trainer and replies with the method's payload, its metrics and the event it
spent. The server never sees more than the reply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from accounting import BudgetExceededError, Event, Ledger, dpsgd_event

from ..data.tensors import TensorData
from ..methods.base import ClientSpec
from ..wire import Broadcast, Reply
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
                }, error=str(err))  # fmt: skip
        try:
            local = self.trainer.train_local(
                self, rnd, broadcast.tensors, noise_multiplier=broadcast.noise_multiplier
            )
            payload = self.trainer.method.payload(local.trained, broadcast.tensors, self.spec, rnd)
            bad = [k for k, t in payload.items() if not bool(torch.isfinite(t).all())]
            if bad:
                raise FloatingPointError(f"non-finite payload tensor {bad[0]}")
        except Exception as exc:  # noqa: BLE001 - one client's failure must not end the run
            return Reply(rnd, cid, "failed", event=event, error=f"{type(exc).__name__}: {exc}")
        metrics = {"loss": local.loss, "steps": local.steps, "examples_seen": local.examples_seen,
                   "seconds": local.seconds}  # fmt: skip
        return Reply(rnd, cid, "ok", payload, metrics, event)
