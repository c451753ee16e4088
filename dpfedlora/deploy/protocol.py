"""The node-local socket between the thin ClientApp and the warm worker (stdlib only).

A Flower 1.42 SuperNode starts a fresh ``flwr-clientapp`` process for every message. Loading
torch and the model there would cost seconds per round. So the ClientApp forwards the message's
bytes to one long-lived worker per node over a Unix socket.

What is authenticated, and how:

- Both ends prove they hold the node's 32-byte key (``worker.key`` in its state directory) by a
  mutual HMAC-SHA256 challenge-response before any message is sent. The worker sends
  ``MAGIC + nonce_s`` (32 random bytes); the client answers
  ``HMAC(key, MAGIC | "client" | nonce_s | nonce_c)`` and its own nonce ``nonce_c``; only if that
  matches (``hmac.compare_digest``) does the worker answer ``HMAC(key, MAGIC | "server" | nonce_s
  | nonce_c)``, which the client checks before it sends the message. Fresh nonces on both sides
  make a recorded answer useless in another session; the role labels stop a reflected one. So a
  process without the key can neither ask the worker to train nor pose as the worker to collect
  the broadcasts.
- Not the stdlib's ``authkey=``: on Python 3.10 and 3.11 it is HMAC-MD5 with an ``==`` compare,
  and it has no timeout. Here the handshake frames have fixed sizes (nothing larger is read) and
  a deadline, so a peer that hangs cannot block the worker for more than ``HANDSHAKE_TIMEOUT``.
  On Linux each end also checks that the other runs as this user (``SO_PEERCRED``).
- Files: the state directory and the socket directory must be real directories (not symbolic
  links) of this user, mode 0700; the key a regular file of this user, mode 0600, 32 bytes. Each
  is opened with ``O_NOFOLLOW`` and checked with ``fstat`` on what was opened, and the key is
  opened relative to the checked directory. Anything else is refused with an error that names
  the path, what was found and the fix. One exception: a state directory of this user with a
  looser mode is made 0700, as before (``deploy local`` and users make it with their umask).
  The key is written in full to a temporary file, then hard-linked into place (``link`` never
  replaces), so a process that races its creation never reads a partial key.
- One worker per state directory: the worker holds an exclusive ``flock`` on ``<socket>.lock``
  for its whole life. Only while holding it does it remove a socket left by a dead worker, and
  only a socket: a regular file or a link at that path is left alone.

A message is a JSON header (with ``n``, the number of payloads) followed by ``n`` bytes frames.
Nothing is unpickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import socket
import stat
import struct
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .node_files import (
    UnsafePathError,
    authkey,
    path_kind,
    pid_alive,
    pid_file,
    require_private,
    socket_path,
)

__all__ = [
    "socket_path", "authkey", "send", "recv", "pid_file", "pid_alive", "PROTOCOL",
    "listen", "connect", "WorkerListener", "server_handshake", "client_handshake",
    "AuthenticationError", "UnsafePathError", "AnotherWorkerError", "require_private",
]  # fmt: skip

PROTOCOL = 3  # bumped when the frames or the handshake change; a worker that differs is restarted
MAX_FRAMES = 100_000  # payloads in one message: one per client the node holds
HANDSHAKE_TIMEOUT = 10.0  # seconds for a peer to finish the handshake once it has begun
LOCK_WAIT = 5.0  # seconds a new worker waits for an exiting one (a restart) to let go
BACKLOG = 16

MAGIC = b"dpfedlora worker socket v1\n"  # the worker's first bytes, and the MACs' domain prefix
_NONCE = 32
_MAC = 32  # SHA-256


class AnotherWorkerError(RuntimeError):
    """A live worker already serves this state directory."""


def _mac(key: bytes, role: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(key, MAGIC + role + server_nonce + client_nonce, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)  # the deadline covers the whole exchange: no byte-by-byte stalling
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"the peer hung up after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
    sock.settimeout(max(deadline - time.monotonic(), 1e-3))
    sock.sendall(data)


def _check_peer(sock: socket.socket) -> None:
    """The other end runs as this user (Linux says who; elsewhere the 0700 directory decides)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
    pid, uid, _gid = struct.unpack("iII", creds)
    if uid != os.getuid():
        raise AuthenticationError(f"the peer (pid {pid}) runs as uid {uid}, not this user")


def server_handshake(
    sock: socket.socket, key: bytes, *, timeout: float = HANDSHAKE_TIMEOUT
) -> None:
    """The worker's side: refuse a client without ``key``, then prove ``key`` to it. Raises
    :class:`AuthenticationError` for a wrong answer, a hang-up or a peer slower than ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        _check_peer(sock)
        server_nonce = secrets.token_bytes(_NONCE)
        _send(sock, MAGIC + server_nonce, deadline)
        answer = _recv_exact(sock, _MAC + _NONCE, deadline)
        client_nonce = answer[_MAC:]
        if not hmac.compare_digest(answer[:_MAC], _mac(key, b"client", server_nonce, client_nonce)):
            raise AuthenticationError("refused a client without this node's key")
        _send(sock, _mac(key, b"server", server_nonce, client_nonce), deadline)
    except TimeoutError as exc:
        raise AuthenticationError(f"a client did not finish the handshake in {timeout}s") from exc
    except (OSError, EOFError) as exc:
        raise AuthenticationError(f"a client broke off the handshake: {exc}") from exc


def client_handshake(
    sock: socket.socket, key: bytes, *, timeout: float = HANDSHAKE_TIMEOUT,
    hello_timeout: float | None = None,
) -> None:  # fmt: skip
    """The ClientApp's side: prove ``key``, then check that the worker holds it too, before
    anything else is sent. The worker's first bytes may wait ``hello_timeout`` (default: no
    limit), as the worker serves one request at a time; the rest must come within ``timeout``."""
    try:
        _check_peer(sock)
        hello = None if hello_timeout is None else time.monotonic() + hello_timeout
        if _recv_exact(sock, len(MAGIC), hello) != MAGIC:
            raise AuthenticationError(
                "the process at the worker socket speaks another protocol (a worker of an older "
                "dpfedlora?). Fix: stop it; the next message starts a new worker"
            )
        deadline = time.monotonic() + timeout
        server_nonce = _recv_exact(sock, _NONCE, deadline)
        client_nonce = secrets.token_bytes(_NONCE)
        _send(sock, _mac(key, b"client", server_nonce, client_nonce) + client_nonce, deadline)
        proof = _recv_exact(sock, _MAC, deadline)
    except EOFError as exc:
        raise AuthenticationError(
            "the worker hung up during the handshake: it holds another key (was worker.key "
            "replaced while it ran?) or it is exiting. Fix: stop it; the next message starts a "
            "new worker"
        ) from exc
    except OSError as exc:
        raise AuthenticationError(f"the handshake with the worker failed: {exc}") from exc
    if not hmac.compare_digest(proof, _mac(key, b"server", server_nonce, client_nonce)):
        raise AuthenticationError(
            "the process at the worker socket does not hold this node's key; nothing was sent "
            "to it. Fix: stop that process; the next message starts a new worker"
        )


def _connection(sock: socket.socket) -> Connection:
    sock.settimeout(None)  # a request may train for minutes: no deadline after the handshake
    return Connection(sock.detach())


# --- the two ends ---


def _try_lock(path: Path) -> tuple[int | None, str]:
    """``(fd, "")`` with an exclusive flock on ``path`` held by ``fd``, or ``(None, holder's
    pid)`` while another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    holder = ""
    try:
        require_private(os.fstat(fd), path, what="the worker lock", mode=None, fix="")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _same_file(fd, path):  # a lock file removed while we waited would lock nobody out
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the next worker's error
            return fd, ""
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None, holder


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _lock(path: Path, wait: float) -> int:
    deadline = time.monotonic() + wait
    while (taken := _try_lock(path))[0] is None:
        if time.monotonic() >= deadline:
            pid = taken[1] or "unknown"
            raise AnotherWorkerError(
                f"another worker serves this node: pid {pid} (socket {path.with_suffix('.sock')})."
                f" One worker per state directory: stop that one (kill {pid}) or let it serve."
            )
        time.sleep(0.05)
    return taken[0]


def _clear_stale_socket(path: Path) -> None:
    """With the node's lock held, a socket at ``path`` is one a dead worker left behind."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafePathError(
            f"{path} is a {path_kind(st.st_mode)}, not a worker socket; it is left alone. Fix: "
            f"move it away (dpfedlora did not make it)."
        )
    require_private(st, path, what="the stale worker socket", mode=None, fix="")
    os.unlink(path)


class WorkerListener:
    """The worker's end for ``state_dir``: ``accept()`` returns a :class:`Connection` only to a
    client that proved the node's key. Holds the node's lock until :meth:`close`. Raises
    :class:`AnotherWorkerError` while a live worker serves ``state_dir`` (after waiting
    ``lock_wait`` seconds for one that is exiting), :class:`UnsafePathError` for a path that is
    not private to this user or a non-socket at the socket's path."""

    def __init__(
        self, state_dir: str | Path, *, lock_wait: float = LOCK_WAIT,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:  # fmt: skip
        self._key, self.address, self._timeout = authkey(state_dir), socket_path(state_dir), timeout
        self._lock = _lock(self.address.with_suffix(".lock"), lock_wait)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _clear_stale_socket(self.address)
            self._sock.bind(str(self.address))
            os.chmod(self.address, 0o600)  # before listen(): nobody could connect yet
            self._sock.listen(BACKLOG)
            self._inode = os.lstat(self.address).st_ino
        except BaseException:
            self._sock.close()
            os.close(self._lock)
            raise
        self._closed = False

    def accept(self) -> Connection:
        """Wait for a client; raise :class:`AuthenticationError` if it fails the handshake."""
        sock, _ = self._sock.accept()
        try:
            server_handshake(sock, self._key, timeout=self._timeout)
        except BaseException:
            sock.close()
            raise
        return _connection(sock)

    def close(self) -> None:
        """Remove the socket while the lock still makes it ours, then let the lock go."""
        if self._closed:
            return
        self._closed = True
        try:
            if os.lstat(self.address).st_ino == self._inode:
                os.unlink(self.address)
        except FileNotFoundError:
            pass
        lock = self.address.with_suffix(".lock")
        if _same_file(self._lock, lock):  # a worker waiting on it sees it gone and locks anew
            lock.unlink()
        self._sock.close()
        os.close(self._lock)

    def __enter__(self) -> WorkerListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


listen = WorkerListener  # the worker's side of :func:`connect`


def connect(
    state_dir: str | Path, *, timeout: float = HANDSHAKE_TIMEOUT,
    hello_timeout: float | None = None,
) -> Connection:  # fmt: skip
    """A connection to the node's worker after the mutual handshake. ``FileNotFoundError`` or
    ``ConnectionRefusedError``: no worker is listening (start one)."""
    key, path = authkey(state_dir), socket_path(state_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        client_handshake(sock, key, timeout=timeout, hello_timeout=hello_timeout)
    except AuthenticationError as exc:
        sock.close()
        raise AuthenticationError(f"{exc} (socket {path}; pid in {pid_file(state_dir)})") from exc
    except BaseException:
        sock.close()
        raise
    return _connection(sock)


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
