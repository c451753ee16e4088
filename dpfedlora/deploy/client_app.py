"""The Flower ClientApp: thin and torch-free. It forwards every message to the node's worker.

Node config (``flower-supernode --node-config``), typed TOML:

- ``partition-ids`` (str, e.g. ``"0,2"``; node config has no lists) or ``partition-id`` (int):
  which clients of the config this node holds (their shards of a built-in set). Each is a data
  owner with its own records in the node's ledger.
- ``state-dir`` (str): the owner's directory. It holds the ledger, the worker key and logs. It
  persists across runs and restarts.
- ``epsilon-budget`` (float, optional): the owner's own ε budget. It overrides the config's.
- ``noise`` (str): ``"secure"`` (the default: noise and sampling from OS entropy, whatever the
  config says) or ``"config"`` (follow ``privacy.secure_mode``; only for tests and local
  simulations, where one person holds every node).
- ``idle-timeout`` (float, seconds, default 900): the worker exits after this long without a
  request.

A train message carries the wire bytes of one :class:`~dpfedlora.wire.Broadcast` per client of
this node in the round; its reply carries one :class:`~dpfedlora.wire.Reply` (or a refusal) per
broadcast. When the owner's budget refuses every request, the reply is a Flower error with code
4001 (:data:`REFUSED`) whose reason is the refusals as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from .. import __version__
from .protocol import PROTOCOL, connect, recv, send

__all__ = ["app", "REFUSED"]

REFUSED = 4001  # the owner's budget refused the request; the node did not train
WORKER_START_TIMEOUT = 120.0  # seconds: importing torch on a loaded machine

app = ClientApp()


def _supernode_pid() -> int:
    """The SuperNode that owns this message. The ClientApp's parent is a ``flower-superexec``
    started with ``--parent-pid <supernode>``. Falls back to the parent's parent."""
    ppid = os.getppid()
    try:
        args = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
        if b"--parent-pid" in args:
            return int(args[args.index(b"--parent-pid") + 1])
        return int(Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return ppid


def _start_worker(state_dir: str, node_pid: int, idle: float) -> None:
    log = open(Path(state_dir) / "worker.log", "ab")  # noqa: SIM115 - handed to the child
    subprocess.Popen(
        [sys.executable, "-m", "dpfedlora.deploy.worker", "--state-dir", state_dir,
         "--watch-pid", str(node_pid), "--idle-timeout", str(idle)],
        start_new_session=True,  # outlives this one-message process
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
    )  # fmt: skip


def _ask(node_config, header: dict, payloads: list[bytes]) -> tuple[dict, list[bytes]]:
    state_dir = str(node_config["state-dir"])
    node_pid = _supernode_pid()
    header = {**header, "version": __version__, "protocol": PROTOCOL, "node_pid": node_pid,
              "node_config": dict(node_config)}  # fmt: skip
    deadline, started = time.monotonic() + WORKER_START_TIMEOUT, False
    while True:
        try:
            conn = connect(state_dir)  # checks the key file and both ends of the handshake
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the node worker did not start; see {state_dir}/worker.log"
                ) from None
            if not started:
                _start_worker(state_dir, node_pid, float(node_config.get("idle-timeout", 900)))
                started = True
            time.sleep(0.1)
            continue
        with conn:
            send(conn, header, payloads)
            answer, data = recv(conn)
        if answer.get("status") != "restart":  # a worker of another version or node
            return answer, data
        started = False
        time.sleep(0.2)


def _handle(msg: Message, context: Context, action: str) -> Message:
    """Both directions carry ``ConfigRecord({"header": JSON text, "payloads": [bytes, ...]})``:
    one payload per client of this node in the round (one message per node, because a SuperNode
    handles one message at a time and polls for the next every few seconds)."""
    record = msg.content["dpfedlora"]
    header = {**json.loads(str(record["header"])), "action": action}
    answer, data = _ask(context.node_config, header, [bytes(b) for b in record["payloads"]])
    if answer["status"] != "ok":
        raise RuntimeError(answer.get("reason", "the node worker failed"))
    info = answer.get("info", {})
    results = info.get("results")
    if results and all(r["status"] == "refused" for r in results):
        # the owner's budget refused every request: the node did not train
        return Message(Error(code=REFUSED, reason=json.dumps(results)), reply_to=msg)
    out = ConfigRecord({"header": json.dumps(info), "payloads": data})
    return Message(RecordDict({"dpfedlora": out}), reply_to=msg)


@app.query()
def describe(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "describe")


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "train")
