"""The node-local worker: one per SuperNode, warm across messages, rounds and runs.

It holds what belongs to the data owner: the base model, the owner's shard, the owner's ledger
and the owner's budget. A train request goes through :meth:`Client.train`. The budget check and
the write-ahead record in the node's own ledger come first. A request the budget refuses is
answered ``refused`` and the shard is never read, whatever the server asked for.

The worker exits when:

- it has had no request for ``--idle-timeout`` seconds;
- the SuperNode it serves (``--watch-pid``) is gone;
- a request comes from another dpfedlora version or another SuperNode. It answers ``restart``
  first, and the ClientApp starts a fresh worker.

Run as ``python -m dpfedlora.deploy.worker``. The ClientApp starts it.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import replace
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

from .. import __version__
from .protocol import PROTOCOL, authkey, pid_alive, pid_file, recv, send, socket_path

__all__ = ["Worker", "main"]


def owner_config(cfg_data: dict[str, Any], node_config: dict[str, Any]):
    """The config as the owner runs it: secure noise unless ``noise = "config"``."""
    from ..config import Experiment, from_dict

    cfg = from_dict(Experiment, cfg_data)
    noise = str(node_config.get("noise", "secure"))
    if noise not in ("secure", "config"):
        raise ValueError(f'node config `noise` must be "secure" or "config". Found {noise!r}.')
    if noise == "secure" and cfg.privacy.private and not cfg.privacy.secure_mode:
        cfg = replace(cfg, privacy=replace(cfg.privacy, secure_mode=True))
    return cfg


class Worker:
    """Answers describe and train requests for one node: the clients (shards) it holds."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self._key: str | None = None
        self._clients: dict[str, Any] = {}

    def _clients_for(self, cfg_data: dict[str, Any], node_config: dict[str, Any]):
        import json

        from accounting import Ledger

        from ..client import Budget
        from ..federation.setup import build_setup

        key = json.dumps([cfg_data, node_config], sort_keys=True)
        if key == self._key:
            return self._clients
        cfg = owner_config(cfg_data, node_config)
        cids = partition_ids(node_config, cfg.data.num_clients)
        self._key, self._clients = None, {}  # one model in memory: drop the old set-up first
        setup = build_setup(cfg, own=own_files(node_config, cids), holds=set(cids))
        p = cfg.privacy
        # one ledger for the node's clients (records are per client): the owner's disk
        ledger = (
            Ledger(self.state_dir / "ledger.jsonl", accountant=p.accountant) if p.private else None
        )
        budget = owner_budget(node_config, p.budget) if p.private else 0.0
        clients = {}
        by_cid = {c.spec.cid: c for c in setup.clients}
        for cid in cids:
            client = by_cid[cid]
            client.budget = Budget(ledger, budget, p.delta) if ledger is not None else None
            clients[cid] = client
        self._key, self._clients = key, clients
        return clients

    def handle(
        self, header: dict[str, Any], payloads: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        """``describe``: the node's shards. ``train``: one broadcast per payload, each for a
        client this node holds, trained in order; one result (and one payload) per broadcast."""
        import numpy as np

        clients = self._clients_for(header["config"], header["node_config"])
        if header["action"] == "describe":
            shards = [{"cid": c.spec.cid, "num_examples": c.spec.num_examples,
                       "label_counts": np.bincount(c.data.class_labels).tolist()}
                      for c in clients.values()]  # fmt: skip
            return {"status": "ok", "info": {"shards": shards, "version": __version__}}, []
        results, out = [], []
        for payload in payloads:
            result, data = self._train_one(clients, payload)
            results.append(result)
            out.append(data)
        return {"status": "ok", "info": {"results": results}}, out

    def _train_one(self, clients: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        from ..wire import Broadcast

        t0 = time.perf_counter()
        broadcast = Broadcast.from_bytes(payload)
        cid = broadcast.client
        client = clients.get(cid)
        if client is None:
            reason = f"this node holds clients {sorted(clients)}, not {cid}"
            return {"cid": cid, "status": "error", "reason": reason}, b""
        # the budget check and the write-ahead record in this node's ledger come first
        reply = client.train(broadcast)
        print(f"round {broadcast.round} client {cid}: {reply.status} in "
              f"{time.perf_counter() - t0:.2f} s", flush=True)  # fmt: skip
        if reply.status == "skipped":
            refusal = {"error": reply.error, "metrics": reply.metrics}
            return {"cid": cid, "status": "refused", "reason": refusal}, b""
        return {"cid": cid, "status": reply.status}, reply.to_bytes()


def partition_ids(node_config: dict[str, Any], num_clients: int) -> list[str]:
    """``partition-ids = "0,2"`` (a string: node config has no lists) or ``partition-id = 0``."""
    raw = node_config.get("partition-ids", node_config.get("partition-id"))
    if raw is None:
        raise ValueError('node config needs `partition-ids` (e.g. "0,2") or `partition-id`.')
    try:
        ids = [int(x) for x in str(raw).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"node config `partition-ids` must be integers. Found {raw!r}.") from None
    bad = [i for i in ids if not 0 <= i < num_clients]
    if bad or not ids:
        raise ValueError(f"node config `partition-ids` must lie in 0..{num_clients - 1} "
                         f"(data.num_clients = {num_clients}). Found {raw!r}.")  # fmt: skip
    return [str(i) for i in ids]


def owner_budget(node_config: dict[str, Any], config_budget: float) -> float:
    """The owner's ε budget: node config ``epsilon-budget``, never the server's word. Only a
    node that follows the config's noise (``noise = "config"``: tests and loopback runs, where
    one person holds every node) may take the config's budget instead."""
    raw = node_config.get("epsilon-budget")
    if raw is None:
        if str(node_config.get("noise", "secure")) == "config":
            return config_budget
        raise ValueError(
            "node config needs `epsilon-budget`: the data owner's own ε budget, which this node "
            "enforces whatever the server asks (e.g. epsilon-budget = 3.0)."
        )
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"node config `epsilon-budget` must be a number > 0. Found {raw!r}.")
    return value


def own_files(node_config: dict[str, Any], cids: list[str]) -> dict[int, str] | None:
    """``data-path``: the owner's own file, the shard of its one client (``partition-id``).
    Without it the node takes its clients' partitions of the config's (built-in) dataset."""
    path = node_config.get("data-path")
    if path is None:
        return None
    if len(cids) != 1:
        raise ValueError(
            "node config `data-path` is one client's records: give one `partition-id` with it. "
            f"Found partition ids {','.join(cids)}."
        )
    if not Path(str(path)).is_file():
        raise ValueError(f"node config `data-path` is not a file on this node. Found {path!r}.")
    return {int(cids[0]): str(path)}


def _expected(header: dict[str, Any], node_pid: int) -> bool:
    return (header.get("version"), header.get("protocol"), header.get("node_pid")) == (
        __version__, PROTOCOL, node_pid)  # fmt: skip


def serve(state_dir: str, watch_pid: int, idle_timeout: float) -> None:
    sock = socket_path(state_dir)
    sock.unlink(missing_ok=True)  # a stale socket of a dead worker
    listener = Listener(str(sock), family="AF_UNIX", authkey=authkey(state_dir))
    os.chmod(sock, 0o600)
    pid_file(state_dir).write_text(f"{os.getpid()}\n")
    worker, last, busy = Worker(state_dir), [time.monotonic()], threading.Lock()

    def stop() -> None:
        sock.unlink(missing_ok=True)
        pid_file(state_dir).unlink(missing_ok=True)
        os._exit(0)

    def watchdog() -> None:
        while True:
            time.sleep(0.5)
            gone = not pid_alive(watch_pid)
            idle = time.monotonic() - last[0] > idle_timeout
            if (gone or idle) and busy.acquire(blocking=False):
                print(f"worker exits: {'node gone' if gone else 'idle'}", flush=True)
                stop()

    threading.Thread(target=watchdog, daemon=True).start()
    # stopped by PID (``deploy local`` on exit): leave no stale socket or pid file behind
    signal.signal(signal.SIGTERM, lambda *_: stop())
    print(f"worker {os.getpid()} serving {state_dir} for node {watch_pid}", flush=True)
    while True:
        try:
            conn = listener.accept()
        except Exception:  # noqa: BLE001 - a client that fails the key check, or hangs up
            continue
        with busy, conn:
            last[0] = time.monotonic()
            try:
                header, payloads = recv(conn)
                if not _expected(header, watch_pid):
                    send(conn, {"status": "restart"})
                    stop()
                answer, data = worker.handle(header, payloads)
            except Exception as exc:  # noqa: BLE001 - reported to the server as the node's error
                traceback.print_exc()
                answer, data = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}, []
            try:
                send(conn, answer, data)
            except OSError:
                pass  # the ClientApp is gone (its node was stopped); the ledger already holds it
            last[0] = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpfedlora.deploy.worker")
    parser.add_argument("--state-dir", required=True, help="the node's state directory")
    parser.add_argument("--watch-pid", type=int, required=True, help="the SuperNode's PID")
    parser.add_argument("--idle-timeout", type=float, default=900.0, help="seconds")
    args = parser.parse_args(argv)
    serve(args.state_dir, args.watch_pid, args.idle_timeout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
