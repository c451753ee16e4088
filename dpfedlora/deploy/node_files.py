"""The node's files: its state directory, the worker's socket path, key and pid file.

Each is opened without following links and checked on what was opened (``fstat``): a real
directory of this user, mode 0700; the key a regular file of this user, mode 0600, 32 bytes.
Anything else is refused with an error naming the path, what was found and the fix (one
exception: a state directory of this user with a looser mode is made 0700, since ``deploy
local`` and users create it with their umask). The key is written in full to a temporary file,
then hard-linked into place (``link`` never replaces), so a process racing its creation never
reads a partial key. The handshake that uses the key is in :mod:`.protocol`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

__all__ = ["UnsafePathError", "require_private", "open_private_dir", "path_kind", "socket_path",
           "pid_file", "pid_alive", "authkey", "KEY_BYTES", "KEY_FILE"]  # fmt: skip

KEY_BYTES = 32
KEY_FILE = "worker.key"


class UnsafePathError(PermissionError):
    """A worker file or directory that is not private to this user, or not of the right kind."""


def path_kind(mode: int) -> str:
    kinds = [(stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"),
             (stat.S_ISREG, "regular file"), (stat.S_ISSOCK, "socket")]  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "special file")


def require_private(
    st: os.stat_result, path: Path, *, what: str, mode: int | None, fix: str
) -> None:
    """Refuse ``path`` (``st`` is its ``fstat``) unless this user owns it and, when ``mode`` is
    given, its permission bits are exactly ``mode``. ``fix`` says what to do about the mode."""
    uid = os.getuid()
    if st.st_uid != uid:
        raise UnsafePathError(
            f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {uid}). Fix: run "
            f"the node as the user who owns it, or remove it so that a new one is made."
        )
    found = stat.S_IMODE(st.st_mode)
    if mode is not None and found != mode:
        raise UnsafePathError(
            f"{what} {path} has mode {found:04o}; it must be {mode:04o} (only its user). Fix: {fix}"
        )


def open_private_dir(path: Path, *, tighten: bool, fix: str) -> int:
    """An fd of directory ``path`` (made 0700 if missing): a real directory of this user, mode
    0700. With ``tighten``, a looser directory of this user is made 0700 rather than refused: the
    state directory, which ``deploy local`` and users create with their umask."""
    try:
        path.mkdir(parents=True, mode=0o700)
        created = True
    except FileExistsError:
        created = False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        raise UnsafePathError(
            f"{path} is a {path_kind(os.lstat(path).st_mode)}, not a directory; the worker's files "
            f"need a real directory of this user (symbolic links are refused). Fix: {fix}"
        ) from None
    try:
        st = os.fstat(fd)
        # a directory we just made may lack bits the umask took; one of the user's, if allowed
        may_fix = created or tighten
        require_private(st, path, what="directory", mode=None if may_fix else 0o700, fix=fix)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def socket_path(state_dir: str | Path) -> Path:
    """A short path (Unix sockets allow ~107 bytes) unique to the state directory, in a 0700
    directory of this user under the temporary directory."""
    key = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]
    base = Path(tempfile.gettempdir()) / f"dpfedlora-{os.getuid()}"
    fix = f"chmod 700 {base} if it is yours, else remove it or set TMPDIR to your own directory"
    os.close(open_private_dir(base, tighten=False, fix=fix))
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
    """The node's 32-byte key, made on first use (see the module docstring for the checks)."""
    state = Path(state_dir)
    fix = f"point state-dir at a real directory of this user, not at a link ({state})"
    dfd = open_private_dir(state, tighten=True, fix=fix)
    try:  # every file operation is relative to the directory that was checked
        try:
            return _read_key(dfd, state / KEY_FILE)
        except FileNotFoundError:
            _create_key(dfd, state / KEY_FILE)
            return _read_key(dfd, state / KEY_FILE)
    finally:
        os.close(dfd)


def _read_key(dfd: int, path: Path) -> bytes:
    remake = "stop the node's worker and delete it; a new key is made on next use"
    try:  # O_NONBLOCK: a FIFO planted at the path must not hang open()
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EMLINK):  # EMLINK: O_NOFOLLOW on BSDs
            raise
        raise UnsafePathError(
            f"the worker key {path} is a symbolic link; it must be a regular file. Fix: {remake}."
        ) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(
                f"the worker key {path} is a {path_kind(st.st_mode)}, not a regular file. Fix: "
                f"remove it; a new key is made on next use."
            )
        fix = f"{remake} (others may have read it), or chmod 600 {path} if no one could have"
        require_private(st, path, what="the worker key", mode=0o600, fix=fix)
        key = f.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"the worker key {path} holds {len(key)} bytes, not {KEY_BYTES}. Fix: {remake}."
        )
    return key


def _create_key(dfd: int, path: Path) -> None:
    """Write a whole key under a temporary name, then link it into place. ``link`` fails when
    the key exists, so the first creator wins and no reader ever sees a partly written key."""
    tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, 0o600)  # whatever the umask
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(fd)
        try:
            os.link(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except FileExistsError:
            pass  # another process made the key first: everyone uses that one
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
                raise
            raise OSError(
                exc.errno, f"cannot make the worker key {path}: its file system has no hard "
                f"links, which making the key atomically needs. Fix: use a state-dir on a local "
                f"file system."
            ) from exc  # fmt: skip
    finally:
        os.unlink(tmp, dir_fd=dfd)


# --- the handshake (fixed-size frames, a deadline on each side) ---
