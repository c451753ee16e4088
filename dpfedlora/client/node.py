"""A data owner's node: the only side of the wire that holds records, and the only one that
decides what leaves.

One :class:`Node` serves every request a server sends to one owner (a Flower SuperNode's
worker, or one process of :class:`~dpfedlora.federation.processes.ProcessClients`). For each
request, in this order:

1. the requested mechanism (the server's raw config) is checked against the owner's
   :class:`~dpfedlora.client.contract.OwnerContract`; the broadcast is decoded and checked
   (only the method's tensors, by name, shape and dtype, all finite; σ finite and positive);
2. the owner's budget is checked at the owner's δ with the owner's accountant, and the release
   is written ahead in the owner's ledger;
3. only then are records read, and the reply holds the noised payload, the event spent and a
   status; a refusal or failure holds a reason code from
   :data:`~dpfedlora.client.contract.REASONS` and nothing else.

Every request is logged on the node (``node.jsonl`` in its state directory) with the values the
server asked for and the number of records read for it, so the owner can audit what happened.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .contract import OwnerContract, Refusal

__all__ = ["Node", "ReadCounter", "refused", "failed"]


class ReadCounter:
    """The owner's shard behind a counter of record reads (every record a step samples, every
    label a description counts): what the node log reports per request."""

    def __init__(self, data: Any) -> None:
        self._data = data
        self.reads = 0

    def __len__(self) -> int:
        return len(self._data)  # the shard's size: no record is read

    def subset(self, idx):
        self.reads += len(idx)
        return self._data.subset(idx)

    @property
    def class_labels(self):
        self.reads += len(self._data)
        return self._data.class_labels

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)


def refused(round_idx: int, cid: str, refusal: Refusal):
    from ..wire import Reply

    return Reply(round_idx, cid, "skipped", error=refusal.reason)


def failed(round_idx: int, cid: str, event=None):
    from ..wire import Reply

    return Reply(round_idx, cid, "failed", event=event, error="failed:internal")


class Node:
    """One data owner's requests: contract, broadcast and budget checks, then training.

    ``contract_for(request)``: the owner's contract (a ``noise = "config"`` node's depends on
    the request; a real node's never does). ``build(cfg, contract)``: the owner's clients
    (``cid -> Client``, data not yet wrapped) for a config that passed the contract.
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        contract_for: Callable[[dict[str, Any]], OwnerContract],
        build: Callable[[Any, OwnerContract], dict[str, Any]],
        ledger_path: str | Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.ledger_path = Path(ledger_path or self.state_dir / "ledger.jsonl")
        self.contract_for = contract_for
        self._build = build
        self._key: str | None = None
        self._clients: dict[str, Any] = {}
        self.print = log or (lambda line: print(line, file=sys.stderr, flush=True))

    # ------------------------------------------------------------ the owner's log
    def log(self, entry: dict[str, Any]) -> None:
        """One JSON line per request in the owner's ``node.jsonl`` (never sent anywhere)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        entry = {"time": time.time(), **entry}
        with open(self.state_dir / "node.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")

    def _reads(self) -> int:
        return sum(c.data.reads for c in self._clients.values() if isinstance(c.data, ReadCounter))

    # ------------------------------------------------------------ set-up
    def _config(self, cfg_data: dict[str, Any], contract: OwnerContract):
        """The request's config as this owner runs it, or a refusal (nothing built yet)."""
        from ..config import Experiment, from_dict

        refusal = contract.check_request(cfg_data)
        if refusal is not None:
            return None, refusal
        try:
            cfg = from_dict(Experiment, cfg_data)
        except Exception as exc:  # noqa: BLE001 - any invalid request is the same refusal
            return None, Refusal("contract:config", {"error": f"{type(exc).__name__}: {exc}"})
        if contract.noise == "secure" and cfg.privacy.private and not cfg.privacy.secure_mode:
            cfg = replace(cfg, privacy=replace(cfg.privacy, secure_mode=True))
        return cfg, None

    def _clients_for(self, cfg, contract: OwnerContract) -> dict[str, Any]:
        from accounting import Ledger

        from .client import Budget

        key = json.dumps([repr(cfg), repr(contract)], sort_keys=True)
        if key == self._key:
            return self._clients
        self._key, self._clients = None, {}  # one model in memory: drop the old set-up first
        clients = self._build(cfg, contract)
        contract.check_shards([c.spec.num_examples for c in clients.values()])
        ledger = Ledger(self.ledger_path, accountant=contract.accountant)
        for client in clients.values():
            client.data = ReadCounter(client.data)
            client.release = contract.release
            if cfg.privacy.private:
                client.budget = Budget(ledger, contract.epsilon_budget, contract.delta)
        self._key, self._clients = key, clients
        return clients

    def prepare(self, cfg_data: dict[str, Any]) -> Refusal | None:
        """Build the owner's clients for a request before its first broadcast (a warm start);
        a request outside the contract builds nothing. No record is read."""
        contract = self.contract_for(cfg_data)
        cfg, refusal = self._config(cfg_data, contract)
        if refusal is None:
            self._clients_for(cfg, contract)
        return refusal

    # ------------------------------------------------------------ requests
    def train(self, cfg_data: dict[str, Any], payload: bytes) -> Any:
        """One broadcast's :class:`~dpfedlora.wire.Reply` (``ok``, ``skipped`` with a reason
        code, or ``failed:internal``)."""
        from ..wire import Broadcast, Reply

        entry: dict[str, Any] = {"action": "train"}
        try:
            broadcast = Broadcast.from_bytes(payload)
        except Exception as exc:  # noqa: BLE001 - whatever the bytes were, they are refused
            entry.update(status="refused", reason="broadcast:malformed", error=repr(exc)[:200])
            self.log(entry)
            return Reply(0, "?", "skipped", error="broadcast:malformed")
        rnd, cid = broadcast.round, broadcast.client
        entry.update(round=rnd, client=cid, noise_multiplier=broadcast.noise_multiplier)
        reads = self._reads()
        try:
            reply = self._train(cfg_data, broadcast, entry)
        except Exception:  # noqa: BLE001 - the details stay on the node, under an id
            fid = secrets.token_hex(4)
            self.print(f"node: request {fid} (round {rnd}, client {cid}) failed:\n"
                       f"{traceback.format_exc()}")  # fmt: skip
            entry.update(status="failed", reason="failed:internal", failure_id=fid)
            reply = failed(rnd, cid)
        entry["records_read"] = self._reads() - reads
        entry.setdefault("status", reply.status)
        entry.setdefault("reason", reply.error)
        self.log(entry)
        return reply

    def _train(self, cfg_data: dict[str, Any], broadcast, entry: dict[str, Any]):
        rnd, cid = broadcast.round, broadcast.client
        contract = self.contract_for(cfg_data)
        cfg, refusal = self._config(cfg_data, contract)
        if refusal is None:
            refusal = contract.check_sigma(broadcast.noise_multiplier, cfg.privacy.private)
        if refusal is None:
            clients = self._clients_for(cfg, contract)
            if cid not in clients:
                refusal = Refusal("unknown_client", {"held": sorted(clients)})
        if refusal is not None:
            entry.update(status="refused", reason=refusal.reason, values=refusal.values)
            return refused(rnd, cid, refusal)
        # the broadcast check (Trainer.refuse_load), then the budget check and the write-ahead
        # record in the owner's ledger, come first
        reply = clients[cid].train(broadcast)
        if reply.status == "skipped":
            entry.update(status="refused", reason=reply.error, values=reply.metrics)
        return reply

    def describe(self, cfg_data: dict[str, Any]) -> list[dict[str, Any]] | Refusal:
        """What the owner declares public about each shard: its size (if declared), and a
        Gaussian-noised label histogram (if the owner opts in; spent in its ledger first)."""
        contract = self.contract_for(cfg_data)
        cfg, refusal = self._config(cfg_data, contract)
        if refusal is not None:
            self.log({"action": "describe", "status": "refused", "reason": refusal.reason,
                      "values": refusal.values})  # fmt: skip
            return refusal
        clients = self._clients_for(cfg, contract)
        reads = self._reads()
        shards = []
        for cid, client in clients.items():
            shard: dict[str, Any] = {"cid": cid}
            if contract.public_shard_size:
                shard["num_examples"] = client.spec.num_examples
            if contract.label_noise is not None:
                counts = self._noised_labels(cfg, contract, client)
                if counts is not None:
                    shard["label_counts"] = counts
            shards.append(shard)
        self.log({"action": "describe", "status": "ok", "shards": shards,
                  "records_read": self._reads() - reads})  # fmt: skip
        return shards

    def _noised_labels(self, cfg, contract: OwnerContract, client) -> list[int] | None:
        """The label histogram plus N(0, σ²) per bin: one record moves one count by one, so the
        L2 sensitivity is 1 and the release is a Gaussian mechanism with noise multiplier σ
        (spent, write-ahead, before the labels are read). Rounded and clipped at 0 afterwards
        (post-processing). ``None`` when the budget refuses it."""
        import numpy as np
        import torch

        from accounting import BudgetExceededError, Gaussian

        from ..noise import make_noise_source

        event = Gaussian(noise_multiplier=contract.label_noise)
        if client.budget is None:
            return None  # a release no ledger records never happens (a non-private request)
        try:
            client.budget.spend(client.spec.cid, 0, "describe", event)
        except BudgetExceededError:
            return None
        width = max(cfg.model.num_labels, 2)
        counts = np.bincount(client.data.class_labels, minlength=width).astype(np.float64)
        source = make_noise_source(contract.noise == "secure" or cfg.privacy.secure_mode,
                                   cfg.seed, "describe", client.spec.cid)  # fmt: skip
        noised = source.add_noise(torch.from_numpy(counts), std=contract.label_noise)
        return [int(max(0, round(float(x)))) for x in noised]
