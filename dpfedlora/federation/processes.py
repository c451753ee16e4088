"""Clients in other processes: one OS process per client (``multiprocessing`` spawn), every
message crossing as bytes (:mod:`dpfedlora.wire`).

Each worker is a data owner: it rebuilds the run's set-up from the config (seeded, so the same
model, split and shards), keeps only its own client, holds its **own** ledger and enforces its
own budget before it touches its shard. The server sees only replies and keeps a mirror of the
events they name. This is the seam the Flower deployment and the GPU path plug into; for a
simulation it is slower than :class:`~dpfedlora.federation.server.LocalClients` (every worker
builds the model and the data) and exists to prove that nothing but the messages is shared.

Workers are spawned, so a script that creates ``ProcessClients`` must guard its entry point
with ``if __name__ == "__main__":`` (each worker imports the main module afresh).
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

from ..config import Experiment, to_dict
from ..wire import Broadcast, Reply

__all__ = ["ProcessClients"]


def _worker(cfg_data: dict[str, Any], cid: str, ledger_path: str, conn) -> None:
    from accounting import Ledger

    from ..client import Budget
    from ..config import from_dict
    from .setup import build_setup

    cfg = from_dict(Experiment, cfg_data)
    setup = build_setup(cfg)
    client = next(c for c in setup.clients if c.spec.cid == cid)
    p = cfg.privacy
    if p.private:
        client.budget = Budget(Ledger(ledger_path, accountant=p.accountant), p.budget, p.delta)
    conn.send_bytes(b"ready")
    while data := conn.recv_bytes():
        conn.send_bytes(client.train(Broadcast.from_bytes(data)).to_bytes())
    conn.close()


class ProcessClients:
    """``train(broadcast)`` sends the bytes to the client's process and decodes its reply."""

    mirrors = True

    def __init__(self, cfg: Experiment, workdir: str | Path, *, start_timeout: float = 600.0):
        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited but the config
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.ledgers: dict[str, Path] = {}
        self._conns, self._procs = {}, []
        for i in range(cfg.data.num_clients):
            cid = str(i)
            self.ledgers[cid] = workdir / f"client-{cid}" / "ledger.jsonl"
            self.ledgers[cid].parent.mkdir(exist_ok=True)
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(to_dict(cfg), cid, str(self.ledgers[cid]), theirs),
                name=f"dpfedlora-client-{cid}",
                daemon=True,
            )
            proc.start()
            self._conns[cid], self._procs = ours, [*self._procs, proc]
        for cid, conn in self._conns.items():
            if not conn.poll(start_timeout) or conn.recv_bytes() != b"ready":
                self.close()
                raise RuntimeError(f"client process {cid} did not start.")

    def train(self, broadcast: Broadcast) -> Reply:
        conn = self._conns[broadcast.client]
        conn.send_bytes(broadcast.to_bytes())
        return Reply.from_bytes(conn.recv_bytes())

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
