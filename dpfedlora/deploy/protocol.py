"""The node-local socket between the thin ClientApp and the warm worker (stdlib only).

A Flower 1.42 SuperNode starts a fresh ``flwr-clientapp`` process for every message. Loading
torch and the model there would cost seconds per round. So the ClientApp forwards the message's
bytes to one long-lived worker per node over a Unix socket.

- The socket lives in a directory only the node's user can open (0700), and the socket itself is
  0600.
- Every connection is authenticated with a 32-byte key from a 0600 file in the node's state
  directory (``multiprocessing.connection`` HMAC challenge).
- A message is a JSON header (with ``n``, the number of payloads) followed by ``n`` bytes
  frames. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["socket_path", "authkey", "send", "recv", "pid_file", "pid_alive", "PROTOCOL"]

PROTOCOL = 2  # bumped when the frames change; a worker that differs is restarted
MAX_FRAMES = 100_000  # payloads in one message: one per client the node holds


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def socket_path(state_dir: str | Path) -> Path:
    """A short path (Unix sockets allow ~107 bytes) unique to the state directory."""
    key = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]
    base = _private_dir(Path(tempfile.gettempdir()) / f"dpfedlora-{os.getuid()}")
    return base / f"{key}.sock"


def pid_file(state_dir: str | Path) -> Path:
    return Path(state_dir) / "worker.pid"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def authkey(state_dir: str | Path) -> bytes:
    """The node's key, created on first use with mode 0600."""
    path = _private_dir(Path(state_dir)) / "worker.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()


def send(conn, header: dict[str, Any], payloads: list[bytes] = ()) -> None:
    conn.send_bytes(json.dumps({**header, "n": len(payloads)}).encode())
    for payload in payloads:
        conn.send_bytes(payload)


def recv(conn) -> tuple[dict[str, Any], list[bytes]]:
    header = json.loads(conn.recv_bytes())
    n = header.pop("n", 0)
    if not isinstance(n, int) or not 0 <= n <= MAX_FRAMES:
        raise ValueError(f"bad frame count {n!r}")
    return header, [conn.recv_bytes() for _ in range(n)]
