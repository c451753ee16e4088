"""The node-local socket: the mutual HMAC handshake, the checks on the key file and the
directories, and one worker per state directory. Fast; stdlib only (no Flower, no torch)."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Listener as StdlibListener
from types import SimpleNamespace

import pytest

from dpfedlora.deploy import node_files
from dpfedlora.deploy.protocol import (
    MAGIC,
    AnotherWorkerError,
    AuthenticationError,
    UnsafePathError,
    authkey,
    client_handshake,
    connect,
    listen,
    recv,
    send,
    socket_path,
)


@pytest.fixture(autouse=True)
def _short_tmp(monkeypatch):
    """Sockets and lock files in a private temporary directory (short: socket paths are limited
    to ~107 bytes), so the tests leave nothing in the user's real one."""
    base = tempfile.mkdtemp(prefix="dps-", dir="/tmp")
    monkeypatch.setattr(node_files, "tempfile", SimpleNamespace(gettempdir=lambda: base))
    yield
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as p:
        yield p


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n and (chunk := sock.recv(n - len(buf))):
        buf += chunk
    return buf


def _client_mac(key: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(key, MAGIC + b"client" + server_nonce + client_nonce, hashlib.sha256).digest()


# --- the handshake ---


def test_a_client_with_the_key_connects_and_exchanges_frames(tmp_path, pool):
    state = tmp_path / "node"

    def client():
        with connect(state, timeout=0.2) as conn:
            time.sleep(0.4)  # longer than the handshake's timeout: it ends with the handshake
            send(conn, {"action": "describe"}, [b"x" * 200_000, b""])
            return recv(conn)

    with listen(state, timeout=0.2) as listener:
        assert stat.S_IMODE(os.lstat(listener.address).st_mode) == 0o600
        assert stat.S_IMODE(listener.address.parent.stat().st_mode) == 0o700
        answer = pool.submit(client)
        with listener.accept() as conn:
            header, payloads = recv(conn)
            time.sleep(0.4)  # a request may train for minutes
            send(conn, {"status": "ok", **header}, payloads[::-1])
    assert answer.result(timeout=10) == (
        {"status": "ok", "action": "describe"}, [b"", b"x" * 200_000]
    )  # fmt: skip
    assert not listener.address.exists()  # close() removes its socket


def test_no_worker_means_file_not_found_which_starts_one(tmp_path):
    with pytest.raises(FileNotFoundError):
        connect(tmp_path / "node")


def test_a_client_with_another_key_is_refused(tmp_path, pool):
    state = tmp_path / "node"
    with listen(state, timeout=2) as listener:
        (state / "worker.key").unlink()  # a new key from now on; the worker holds the old one
        accepted = pool.submit(listener.accept)
        with pytest.raises(AuthenticationError, match="hung up during the handshake"):
            connect(state)
        with pytest.raises(AuthenticationError, match="without this node's key"):
            accepted.result(timeout=5)


@pytest.mark.parametrize("proof", ["another key", "reflected"])
def test_a_fake_worker_is_detected_before_anything_is_sent(tmp_path, pool, proof):
    """A process at the socket that lacks the key cannot collect the ClientApp's message: not
    with a MAC under its own key, nor by sending the client's own MAC back."""
    state = tmp_path / "node"
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fake.bind(str(socket_path(state)))
    fake.listen(1)

    def fake_worker():
        conn, _ = fake.accept()
        with conn:
            server_nonce = os.urandom(32)
            conn.sendall(MAGIC + server_nonce)
            answer = _read(conn, 64)
            mine = _client_mac(os.urandom(32), server_nonce, answer[32:])
            conn.sendall(mine if proof == "another key" else answer[:32])
            return conn.recv(1 << 16)  # what the client sends next: nothing

    harvested = pool.submit(fake_worker)
    with pytest.raises(AuthenticationError, match="does not hold this node's key"):
        connect(state)
    assert harvested.result(timeout=5) == b""
    fake.close()


def test_a_recorded_answer_is_refused_in_a_new_session(tmp_path, pool):
    state = tmp_path / "node"
    key = authkey(state)
    # record a genuine client's answer to one nonce (playing the worker by hand)
    ours, theirs = socket.socketpair()
    done = pool.submit(client_handshake, theirs, key, timeout=2)
    first_nonce = os.urandom(32)
    ours.sendall(MAGIC + first_nonce)
    recorded = _read(ours, 64)
    assert recorded[:32] == _client_mac(key, first_nonce, recorded[32:])  # it was valid then
    ours.close()
    with pytest.raises(AuthenticationError):
        done.result(timeout=5)
    theirs.close()
    # replay it to the real worker, which sends a new nonce
    with listen(state, timeout=2) as listener:
        accepted = pool.submit(listener.accept)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as replayer:
            replayer.connect(str(listener.address))
            hello = _read(replayer, len(MAGIC) + 32)
            assert hello.startswith(MAGIC) and hello[len(MAGIC) :] != first_nonce
            replayer.sendall(recorded)
            with pytest.raises(AuthenticationError, match="without this node's key"):
                accepted.result(timeout=5)
            assert replayer.recv(64) == b""  # refused: the worker proved nothing and hung up


@pytest.mark.parametrize("behaviour", ["silent", "dribbling"])
def test_a_hung_client_cannot_hold_the_worker(tmp_path, pool, behaviour):
    state = tmp_path / "node"
    with listen(state, timeout=0.3) as listener:
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.connect(str(listener.address))

        def dribble():
            for _ in range(30):  # one byte every 0.05 s: each read is quick, the whole is not
                time.sleep(0.05)
                try:
                    peer.send(b"x")
                except OSError:
                    return

        if behaviour == "dribbling":
            pool.submit(dribble)
        start = time.monotonic()
        with pytest.raises(AuthenticationError, match="did not finish the handshake in 0.3s"):
            listener.accept()
        assert time.monotonic() - start < 1.5
        peer.close()


def test_a_worker_of_the_stdlib_protocol_is_named_not_waited_on(tmp_path, pool):
    state = tmp_path / "node"
    old = StdlibListener(str(socket_path(state)), family="AF_UNIX", authkey=authkey(state))
    pool.submit(old.accept)  # sends its MD5 challenge, then fails when we hang up
    with pytest.raises(AuthenticationError, match="speaks another protocol"):
        connect(state, hello_timeout=5)
    old.close()


# --- the key file and the directories ---


def test_a_key_readable_by_others_is_refused(tmp_path):
    state = tmp_path / "node"
    authkey(state)
    os.chmod(state / "worker.key", 0o644)
    with pytest.raises(UnsafePathError, match=r"worker\.key has mode 0644; it must be 0600.*chmod"):
        authkey(state)


def test_a_key_of_another_user_is_refused(tmp_path, monkeypatch):
    state = tmp_path / "node"
    authkey(state)
    real_fstat, other = os.fstat, os.getuid() + 1

    def fstat(fd):  # the key file (not the directory) as if another user owned it
        st = real_fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return st
        return os.stat_result(tuple(st)[:4] + (other,) + tuple(st)[5:])

    monkeypatch.setattr(node_files.os, "fstat", fstat)
    with pytest.raises(UnsafePathError, match=rf"worker\.key is owned by uid {other}"):
        authkey(state)


def test_a_state_dir_of_another_user_is_refused(tmp_path, monkeypatch):
    state = tmp_path / "node"
    authkey(state)
    other = os.getuid() + 1
    monkeypatch.setattr(node_files.os, "getuid", lambda: other)
    with pytest.raises(UnsafePathError, match=r"directory .*node is owned by uid"):
        authkey(state)


def test_a_symlinked_key_is_refused(tmp_path):
    state = tmp_path / "node"
    authkey(state)
    elsewhere = tmp_path / "planted.key"
    elsewhere.write_bytes(os.urandom(32))
    os.chmod(elsewhere, 0o600)
    (state / "worker.key").unlink()
    (state / "worker.key").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        authkey(state)


def test_a_symlinked_state_dir_is_refused(tmp_path):
    real = tmp_path / "real"
    authkey(real)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    for use in (authkey, connect, listen):
        with pytest.raises(UnsafePathError, match=r"link is a symbolic link, not a directory"):
            use(tmp_path / "link")


def test_a_loose_state_dir_of_ours_is_tightened_but_a_loose_socket_dir_is_refused(tmp_path):
    state = tmp_path / "node"
    state.mkdir(mode=0o755)  # what `deploy local` and a user's umask make
    authkey(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    base = socket_path(state).parent
    os.chmod(base, 0o755)
    with pytest.raises(UnsafePathError, match=r"has mode 0755; it must be 0700.*chmod 700"):
        socket_path(state)


def test_a_short_key_is_refused_with_the_fix(tmp_path):
    state = tmp_path / "node"
    authkey(state)
    (state / "worker.key").write_bytes(b"")  # what the old create-then-write could leave
    with pytest.raises(ValueError, match="holds 0 bytes, not 32.*delete it"):
        authkey(state)


def test_racing_first_uses_all_read_the_same_whole_key(tmp_path):
    for i in range(20):  # threads: link(2) and open(2) release the GIL, so they do race
        state, barrier = tmp_path / f"t{i}", threading.Barrier(12)

        def first_use(_, state=state, barrier=barrier):
            barrier.wait()
            return authkey(state)

        with ThreadPoolExecutor(12) as threads:
            keys = set(threads.map(first_use, range(12)))
        assert len(keys) == 1 and len(keys.pop()) == 32
        assert [p.name for p in (tmp_path / f"t{i}").iterdir()] == ["worker.key"]  # no temp
    if "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(8) as processes:
            for i in range(5):
                keys = set(processes.map(authkey, [tmp_path / f"p{i}"] * 16))
                assert len(keys) == 1 and len(keys.pop()) == 32


# --- one worker per state directory ---


def _listen_and_die(state) -> None:
    listen(state)
    os._exit(0)  # killed: no close(), so the socket stays behind


def test_a_second_worker_is_refused_while_the_first_lives(tmp_path, pool):
    state = tmp_path / "node"
    first = listen(state)
    busy = f"another worker serves this node: pid {os.getpid()}"
    with pytest.raises(AnotherWorkerError, match=busy):
        listen(state, lock_wait=0)
    assert stat.S_ISSOCK(os.lstat(first.address).st_mode)  # the live worker's socket is kept
    accepted = pool.submit(first.accept)
    connect(state).close()
    accepted.result(timeout=5).close()
    threading.Timer(0.3, first.close).start()  # an exiting worker (a restart) lets go soon
    with listen(state, lock_wait=5) as second:
        assert second.address == first.address


def test_the_socket_of_a_dead_worker_is_replaced(tmp_path, pool):
    state = tmp_path / "node"
    if "fork" in multiprocessing.get_all_start_methods():
        child = multiprocessing.get_context("fork").Process(target=_listen_and_die, args=(state,))
        child.start()
        child.join(10)
    else:
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(socket_path(state)))
        dead.close()
    assert stat.S_ISSOCK(os.lstat(socket_path(state)).st_mode)
    with pytest.raises(ConnectionRefusedError):  # the ClientApp starts a worker on this
        connect(state)
    with listen(state, lock_wait=0) as listener:
        accepted = pool.submit(listener.accept)
        connect(state).close()
        accepted.result(timeout=5).close()


@pytest.mark.parametrize("planted", ["regular file", "symbolic link"])
def test_only_a_socket_is_ever_removed_from_the_socket_path(tmp_path, planted):
    state = tmp_path / "node"
    path, target = socket_path(state), tmp_path / "precious"
    target.write_text("keep me")
    if planted == "regular file":
        path.write_text("keep me")
    else:
        path.symlink_to(target)
    with pytest.raises(UnsafePathError, match=f"is a {planted}, not a worker socket"):
        listen(state, lock_wait=0)
    assert os.path.lexists(path) and path.read_text() == "keep me"
    assert target.read_text() == "keep me"
