"""The node-local worker: one per SuperNode, warm across messages, rounds and runs.

It holds what belongs to the data owner: the base model, the owner's shard, the owner's ledger
and the owner's contract (the node config: budget, δ, clip norm, accountant, noise, what may
leave). Every request goes through :class:`~dpfedlora.client.node.Node`: the contract and the
broadcast are checked, then the budget, then the write-ahead record in the node's own ledger;
only then is the shard read. A request outside the contract or the budget is answered
``refused`` with a reason code, whatever the server asked for.

The worker exits when:

- it has had no request for ``--idle-timeout`` seconds;
- the SuperNode it serves (``--watch-pid``) is gone;
- a request comes from another dpfedlora version or another SuperNode. It answers ``restart``
  first, and the ClientApp starts a fresh worker.

Run as ``python -m dpfedlora.deploy.worker``. The ClientApp starts it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .. import __version__
from .protocol import (
    PROTOCOL,
    AnotherWorkerError,
    AuthenticationError,
    UnsafePathError,
    listen,
    pid_alive,
    pid_file,
    recv,
    send,
)

__all__ = ["Worker", "main"]


class Worker:
    """Answers describe and train requests for one node: the clients (shards) it holds, under
    the owner's contract (:mod:`dpfedlora.client.node`)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self._node = None
        self._node_key: str | None = None

    def node(self, node_config: dict[str, Any]):
        """The owner's :class:`~dpfedlora.client.node.Node` for this node config (the node
        config is the owner's, local to the node: it never comes from the server)."""
        import json

        from ..client.contract import contract_from_node_config
        from ..client.node import Node

        key = json.dumps(node_config, sort_keys=True, default=str)
        if key != self._node_key:
            contract_from_node_config(node_config, request={})  # a bad node config fails now

            def build(cfg, contract):
                from ..federation.setup import build_setup

                cids = partition_ids(node_config, cfg.data.num_clients)
                setup = build_setup(cfg, own=own_files(node_config, cids), holds=set(cids))
                by_cid = {c.spec.cid: c for c in setup.clients}
                return {cid: by_cid[cid] for cid in cids}

            self._node = Node(
                self.state_dir,
                contract_for=lambda req: contract_from_node_config(node_config, request=req),
                build=build,
            )
            self._node_key = key
        return self._node

    def handle(
        self, header: dict[str, Any], payloads: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        """``describe``: what the owner declares public about its shards. ``train``: one
        broadcast per payload, each answered under the owner's contract, in order; one result
        (and one payload) per broadcast."""
        node = self.node(header["node_config"])
        if header["action"] == "describe":
            shards = node.describe(header["config"])
            if not isinstance(shards, list):
                return {"status": "ok", "info": {"refused": shards.reason,
                                                 "version": __version__}}, []  # fmt: skip
            return {"status": "ok", "info": {"shards": shards, "version": __version__}}, []
        results, out = [], []
        for payload in payloads:
            t0 = time.perf_counter()
            reply = node.train(header["config"], payload)
            print(f"round {reply.round} client {reply.client}: {reply.status} {reply.error} "
                  f"in {time.perf_counter() - t0:.2f} s", flush=True)  # fmt: skip
            if reply.status == "skipped":
                refusal = {"error": reply.error, "metrics": reply.metrics}
                results.append({"cid": reply.client, "status": "refused", "reason": refusal})
                out.append(b"")
            else:
                results.append({"cid": reply.client, "status": reply.status})
                out.append(reply.to_bytes())
        return {"status": "ok", "info": {"results": results}}, out


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
    # checks the state directory and the key, takes the node's lock (one worker per state
    # directory), and replaces a dead worker's socket (never anything else) with a 0600 one
    listener = listen(state_dir)
    pid_file(state_dir).write_text(f"{os.getpid()}\n")
    worker, last, busy = Worker(state_dir), [time.monotonic()], threading.Lock()

    def stop() -> None:
        listener.close()  # removes our socket while the lock still makes it ours
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
        except AuthenticationError as exc:  # a peer without the node's key, or one that hung
            print(f"refused a connection: {exc}", flush=True)
            continue
        except OSError:  # accept() itself failed (out of file descriptors?): try again
            time.sleep(0.1)
            continue
        with busy, conn:
            last[0] = time.monotonic()
            try:
                header, payloads = recv(conn)
                if not _expected(header, watch_pid):
                    send(conn, {"status": "restart"})
                    stop()
                answer, data = worker.handle(header, payloads)
            except Exception:  # noqa: BLE001 - the details stay in the node's log, under an id
                fid = secrets.token_hex(4)
                print(f"request failed (failure id {fid}):", flush=True)
                traceback.print_exc()
                answer, data = {"status": "error", "reason": "failed:internal"}, []
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
    try:
        serve(args.state_dir, args.watch_pid, args.idle_timeout)
    except (AnotherWorkerError, UnsafePathError) as exc:  # one line in worker.log
        print(f"worker not started: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
