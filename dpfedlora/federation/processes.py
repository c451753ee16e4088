"""Clients in other processes: one OS process per client (``multiprocessing`` spawn), every
message crossing as bytes (:mod:`dpfedlora.wire`).

Each worker is a data owner (a :class:`~dpfedlora.client.node.Node`, as on a Flower
SuperNode): it rebuilds the run's set-up from the config (seeded, so the same model, split and
shards), keeps only its own client, holds its **own** ledger and contract, and answers every
broadcast under them (contract, broadcast and budget checks before it touches its shard; a
reason code, never an error's text, when it refuses or fails). The server sees only replies
and keeps a mirror of the events they name. This is the seam the Flower deployment and the GPU
path plug into; for a simulation it is slower than
:class:`~dpfedlora.federation.server.LocalClients` (every worker builds the model and the data)
and exists to prove that nothing but the messages is shared.

Workers are spawned, so a script that creates ``ProcessClients`` must guard its entry point
with ``if __name__ == "__main__":`` (each worker imports the main module afresh).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

from ..client.contract import OwnerContract, contract_for_simulation
from ..config import Experiment, to_dict
from ..wire import Broadcast, Reply

__all__ = ["ProcessClients"]


def _worker(cfg_data: dict[str, Any], cid: str, state_dir: str, contract, conn) -> None:
    from ..client.node import Node
    from .setup import build_setup

    def build(cfg, _contract):
        setup = build_setup(cfg, holds={cid})
        return {cid: next(c for c in setup.clients if c.spec.cid == cid)}

    node = Node(state_dir, contract_for=lambda _request: contract, build=build)
    node.prepare(cfg_data)  # a process is ready once its model is (nothing is read)
    conn.send_bytes(b"ready")
    # a message: a JSON header (the action and the request's config, or null for the one the
    # process was started with), then the broadcast's bytes
    while header := conn.recv_bytes():
        head, data = json.loads(header), conn.recv_bytes()
        request = cfg_data if head.get("config") is None else head["config"]
        if head.get("action") == "describe":
            answer = node.describe(request)
            out = {"shards": answer} if isinstance(answer, list) else {"refused": answer.reason}
            conn.send_bytes(json.dumps(out).encode())
        else:
            conn.send_bytes(node.train(request, data).to_bytes())
    conn.close()


class ProcessClients:
    """``train(broadcast)`` sends the bytes to the client's process and decodes its reply."""

    mirrors = True

    def __init__(
        self,
        cfg: Experiment,
        workdir: str | Path,
        *,
        contract: OwnerContract | None = None,
        cids: list[str] | None = None,
        start_timeout: float = 600.0,
    ):
        """``cfg``: what the server asks every client for. ``contract``: every owner's own
        (default: what ``cfg`` says, as in a simulation where one person holds every shard).
        ``cids``: the owners to start (default: every client)."""
        contract = contract_for_simulation(cfg) if contract is None else contract
        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited but the config
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.ledgers: dict[str, Path] = {}
        self._conns, self._procs = {}, []
        for cid in cids if cids is not None else [str(i) for i in range(cfg.data.num_clients)]:
            self.ledgers[cid] = workdir / f"client-{cid}" / "ledger.jsonl"
            self.ledgers[cid].parent.mkdir(exist_ok=True)
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(to_dict(cfg), cid, str(self.ledgers[cid].parent), contract, theirs),
                name=f"dpfedlora-client-{cid}",
                daemon=True,
            )
            proc.start()
            self._conns[cid], self._procs = ours, [*self._procs, proc]
        for cid, conn in self._conns.items():
            if not conn.poll(start_timeout) or conn.recv_bytes() != b"ready":
                self.close()
                raise RuntimeError(f"client process {cid} did not start.")

    def train(self, broadcast: Broadcast, *, request: dict[str, Any] | None = None) -> Reply:
        """The client's reply to ``broadcast``. ``request``: the config the server asks under
        (default: the one the processes started with); a curious server may send any."""
        return Reply.from_bytes(self._ask(broadcast.client, "train", request, broadcast.to_bytes()))

    def describe(self, cid: str, *, request: dict[str, Any] | None = None) -> dict[str, Any]:
        """What client ``cid``'s owner declares public about its shard."""
        return json.loads(self._ask(cid, "describe", request, b""))

    def _ask(self, cid: str, action: str, request, payload: bytes) -> bytes:
        conn = self._conns[cid]
        conn.send_bytes(json.dumps({"action": action, "config": request}).encode())
        conn.send_bytes(payload)
        return conn.recv_bytes()

    def train_all(self, broadcasts, stop):
        from .server import train_each

        return train_each(self.train, broadcasts, stop)

    def close(self) -> None:
        for conn in self._conns.values():
            try:
                conn.send_bytes(b"")
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
        self._conns, self._procs = {}, []

    def __enter__(self) -> ProcessClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
