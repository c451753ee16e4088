"""``dpfedlora deploy local``: a real Flower deployment on loopback, started and stopped here.

:class:`LocalFederation` starts these processes, in this order:

1. A throwaway CA and certificates (:mod:`.certs`).
2. A SuperLink on ``127.0.0.1`` with TLS and SuperNode authentication.
3. The SuperNodes' public keys, registered with ``flwr supernode register``.
4. N SuperNodes, each with its own ``FLWR_HOME``, Runtime API port and state directory (its
   ledger).

:meth:`LocalFederation.run` then runs a config with ``flwr run`` against the SuperLink. The
run's directory is written by the ServerApp.

Every process is started in its own session and stopped by its PID on exit, Ctrl-C or error.
That covers each SuperNode's warm worker too, found by its pid file. Telemetry and update checks
are off. Nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .. import __version__
from ..errors import UserError
from .certs import make_certificates
from .protocol import pid_alive, pid_file

__all__ = ["LocalFederation", "DeployLaunchError", "flower_env", "require_flower", "APP_DIR"]

APP_DIR = Path(__file__).parent / "app"
CONNECTION = "dpfedlora-local"


class DeployLaunchError(UserError, RuntimeError):
    """The federation could not be started or the run did not finish (one line, exit 2)."""


def require_flower() -> None:
    """Flower is an optional extra: say how to install it before anything is started."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise DeployLaunchError(
            "Flower is not installed. Install the extra: pip install 'dpfedlora[flower]'."
        ) from None


def flower_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # Flower starts its own executables (flower-superexec, flwr-clientapp) by name
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)  # fmt: skip
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        raise DeployLaunchError(
            f"`{name}` not found: install the Flower extra, `pip install 'dpfedlora[flower]'`."
        )
    return found


def _toml(value) -> str:
    return json.dumps(value) if isinstance(value, (str, bool)) else repr(value)


class LocalFederation:
    """A SuperLink and ``supernodes`` SuperNodes on loopback, under ``workdir``."""

    def __init__(self, workdir: str | Path, supernodes: int, clients: int, *, log=print,
                 epsilon_budgets: dict[int, float] | None = None,
                 noise: str = "config",
                 contracts: dict[int, dict[str, object]] | None = None) -> None:  # fmt: skip
        """Node ``i`` holds clients ``i, i + N, i + 2N, ...`` of ``clients`` (their shards, their
        ledger); ``epsilon_budgets``: the owner's own budget of some nodes; ``noise``: the nodes'
        noise setting (``"secure"``: OS entropy whatever the config says; ``"config"``: follow
        ``privacy.secure_mode``, so that seeded runs reproduce the simulator); ``contracts``:
        more owner-contract keys of some nodes' node configs (``delta``, ``max-clip-norm``,
        ``allow-non-private``, ...; see :mod:`dpfedlora.client.contract`).
        A ``noise = "config"`` node takes every contract key it does not state from the config."""
        if not 1 <= supernodes <= clients:
            raise DeployLaunchError(
                f"`--supernodes` must be between 1 and data.num_clients = {clients}. "
                f"Found {supernodes}."
            )
        self.dir = Path(workdir).resolve()
        self.n, self.clients, self.log = supernodes, clients, log
        self.budgets = epsilon_budgets or {}
        self.noise = noise
        self.contracts = contracts or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: set[int] = set()
        self.node_ports: dict[int, int] = {}
        self.port = 0

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        log.write(("$ " + " ".join(args) + "\n").encode())  # what ran, for whoever debugs it
        log.flush()
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        log.close()
        self.procs[name] = proc
        self._record_pid(proc.pid)
        return proc

    def _record_pid(self, pid: int) -> None:
        """Every PID ever started, on disk (``started_pids.json``): a test checks that none is
        left running after the command."""
        self.started.add(pid)
        (self.dir / "started_pids.json").write_text(json.dumps(sorted(self.started)))

    def start(self) -> None:
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.certs = make_certificates(self.dir / "certs", self.n)
        self.port = _free_port()
        home = self.dir / "flwr" / "superlink"
        home.mkdir(parents=True, exist_ok=True)
        c = self.certs
        self._spawn("superlink", [
            _bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
            "--disable-runtime-dependency-installation", "--ssl-ca-certfile", str(c.ca),
            "--ssl-certfile", str(c.server_cert), "--ssl-keyfile", str(c.server_key),
            "--enable-supernode-auth",
        ], flower_env(home))  # fmt: skip
        self._wait_health(60.0)
        self.cli_home = self.dir / "flwr" / "cli"
        self.cli_home.mkdir(parents=True, exist_ok=True)
        (self.cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = {_toml(str(c.ca))}\n'
        )
        for i in range(self.n):
            self._flwr(["supernode", "register", str(c.node_keys[i].with_suffix(".pub")),
                        CONNECTION], timeout=120)  # fmt: skip
        for i in range(self.n):
            self.start_node(i)

    def state_dir(self, i: int) -> Path:
        return self.dir / "nodes" / f"node-{i}"

    def start_node(self, i: int) -> subprocess.Popen:
        """Start (or restart) SuperNode ``i``; it keeps its state directory (its ledger)."""
        state = self.state_dir(i)
        home = state / "flwr"
        home.mkdir(parents=True, exist_ok=True)
        ids = ",".join(str(c) for c in range(i, self.clients, self.n))
        node_cfg = {"partition-ids": ids, "state-dir": str(state), "noise": self.noise}
        if i in self.budgets:
            node_cfg["epsilon-budget"] = float(self.budgets[i])
        node_cfg.update(self.contracts.get(i, {}))
        (state / "node.toml").write_text(
            "".join(f"{k} = {_toml(v)}\n" for k, v in node_cfg.items())
        )
        # a restarted node keeps its Runtime API port
        port = self.node_ports.setdefault(i, _free_port())
        # the nodes share this machine's cores: one node's torch threads each, not all of them
        # (oversubscribed OpenMP threads made a quickstart round 2.8x slower than in-process)
        threads = str(max(1, (os.cpu_count() or 1) // self.n))
        env = flower_env(home, FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1", OMP_NUM_THREADS=threads,
                         MKL_NUM_THREADS=threads)  # fmt: skip
        return self._spawn(f"supernode-{i}", [
            _bin("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
            "--host", "127.0.0.1", "--port", str(port),
            "--root-certificates", str(self.certs.ca),
            "--auth-supernode-private-key", str(self.certs.node_keys[i]),
            "--node-config", str(state / "node.toml"),
        ], env)  # fmt: skip

    def restart_node(self, i: int, *, timeout: float = 240.0, settle: float = 8.0) -> None:
        """Start node ``i`` again after a crash. With SuperNode authentication the SuperLink
        refuses the same key while the dead instance still counts as online (about 60 s), and
        the SuperNode then exits: retry, as a supervisor would, until one stays up ``settle``
        seconds."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.start_node(i)
            try:
                proc.wait(timeout=settle)
            except subprocess.TimeoutExpired:
                return
            if time.monotonic() > deadline:
                raise DeployLaunchError(f"SuperNode {i} did not restart within {timeout:g} s.")
            time.sleep(2.0)

    def kill_node(self, i: int) -> None:
        """SIGKILL SuperNode ``i`` (a fault, for tests); its worker notices and exits."""
        proc = self.procs.pop(f"supernode-{i}")
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def _wait_health(self, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.certs.ca))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["superlink"].poll() is not None:
                raise DeployLaunchError(
                    f"the SuperLink exited; see {self.dir / 'logs' / 'superlink.log'}"
                )
            try:
                url = f"https://127.0.0.1:{self.port}/health"
                with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise DeployLaunchError(f"the SuperLink did not answer on 127.0.0.1:{self.port}")

    def _flwr(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess:
        out = subprocess.run([_bin("flwr"), *args], env=flower_env(self.cli_home),
                             capture_output=True, text=True, timeout=timeout)  # fmt: skip
        if out.returncode != 0:
            raise DeployLaunchError(
                f"`flwr {' '.join(args[:2])}` failed: {(out.stderr or out.stdout).strip()}"
            )
        return out

    # ------------------------------------------------------------ runs
    def run(self, config: str | Path, out: str | Path, *, overrides: list[str] = (),
            round_timeout: float = 600.0, node_wait: float = 300.0) -> dict:  # fmt: skip
        """Run ``config`` on the federation; returns its ``summary.json``."""
        out = Path(out).resolve()
        run_cfg = self.dir / f"run-config-{time.time_ns()}.toml"
        values = {
            "config-path": str(Path(config).resolve()),
            "overrides": json.dumps(list(overrides)),
            "out-dir": str(out),
            "version": __version__,
            "nodes": self.n,
            "node-wait": float(node_wait),
            "round-timeout": float(round_timeout),
        }
        run_cfg.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in values.items()))
        started = time.time()
        log_path = self.dir / "logs" / f"run-{out.name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [_bin("flwr"), "run", str(APP_DIR), CONNECTION, "--stream", "--run-config",
                 str(run_cfg)], env=flower_env(self.cli_home), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            self.procs["flwr-run"] = proc
            self._record_pid(proc.pid)
            try:
                self._follow(proc, log_path)
            finally:
                if proc.poll() is None:
                    _kill_group(proc.pid, signal.SIGTERM)
                self.procs.pop("flwr-run", None)
        summary = out / "summary.json"
        if not summary.exists() or summary.stat().st_mtime < started:
            tail = log_path.read_text()[-3000:]
            raise DeployLaunchError(f"the deployed run wrote no summary; its log ends:\n{tail}")
        return json.loads(summary.read_text())

    # lines of the server's own log worth showing (Flower's INFO lines stay in the log file)
    _SHOW = ("DP:", "memory:", "noise:", "round ", "warning")

    def _follow(self, proc: subprocess.Popen, log_path: Path) -> None:
        """Wait for ``flwr run``, passing the server's round lines to ``log`` as they come."""
        with open(log_path, errors="replace") as f:
            while True:
                done = proc.poll() is not None
                for line in f.read().splitlines():
                    if line.startswith(self._SHOW):
                        self.log(line)
                if done:
                    return
                time.sleep(0.5)

    # ------------------------------------------------------------ stop
    def pids(self) -> list[int]:
        """Every PID this federation started (and the workers its nodes started)."""
        pids = [p.pid for p in self.procs.values()]
        for i in range(self.n):
            f = pid_file(self.state_dir(i))
            try:
                pid = int(f.read_text())
            except (OSError, ValueError):
                continue
            pids.append(pid)
            self._record_pid(pid)
        return pids

    def stop(self) -> None:
        workers = [p for p in self.pids() if p not in {q.pid for q in self.procs.values()}]
        for proc in self.procs.values():
            _kill_group(proc.pid, signal.SIGTERM)
        for pid in workers:
            _kill_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pid in workers:
            _wait_gone(pid, 10.0)
        self.procs = {}
        # Flower detaches some children (the SuperLink's superexec); they carry our FLWR_HOME
        for pid in leftover_pids(self.dir):
            _kill_group(pid, signal.SIGTERM)
        for pid in leftover_pids(self.dir):
            _wait_gone(pid, 10.0)


def leftover_pids(folder: Path) -> list[int]:
    """Processes whose ``FLWR_HOME`` lies under ``folder`` (Linux /proc; elsewhere none)."""
    mark = f"FLWR_HOME={folder}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(mark) for e in env) and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def _kill_group(pid: int, sig: int) -> None:
    """The process and everything in its session (superexec, clientapps)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    _kill_group(pid, signal.SIGKILL)
