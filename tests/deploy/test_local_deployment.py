"""A real Flower deployment on loopback (SuperLink + SuperNodes, TLS, node authentication)
reproduces the in-process simulator, and each data owner enforces its own budget.

Slow (about a minute per federation on a 2-core machine): run by ``make test-slow`` in CI, which
installs the ``flower`` extra first. Skipped where Flower is not installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from accounting import Ledger
from dpfedlora.federation import run
from tests.helpers import TINY, tiny_cfg

pytest.importorskip("flwr")
pytestmark = pytest.mark.slow


def _quiet(_line: str) -> None:
    pass


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _by_client(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["client"], []).append(r)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent has not reaped it yet)
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _started_pids(deployment: Path) -> list[int]:
    """Every PID the launcher started, plus every node worker that ever served."""
    pids = json.loads((deployment / "started_pids.json").read_text())
    for log in deployment.glob("nodes/*/worker.log"):
        pids += [int(p) for p in re.findall(r"^worker (\d+) serving", log.read_text(), re.M)]
    return pids


def _assert_nothing_left(deployment: Path) -> None:
    deadline = time.monotonic() + 20  # SIGTERM'd processes take a moment to exit
    while (left := [p for p in _started_pids(deployment) if _alive(p)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert not left, f"processes left running: {left}"


def _listening_addresses(pids: list[int]) -> list[str]:
    """The local addresses of every listening TCP socket these processes hold (Linux /proc)."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                found.append(cols[1])
    return found


def _assert_same_run(sim: Path, dep: Path, sim_summary: dict, dep_summary: dict) -> None:
    assert dep_summary["final"] == pytest.approx(sim_summary["final"], abs=1e-6)
    assert dep_summary["max_epsilon"] == pytest.approx(sim_summary["max_epsilon"], abs=1e-9)
    assert dep_summary["epsilon_per_client"] == pytest.approx(
        sim_summary["epsilon_per_client"], abs=1e-9
    )
    a = torch.load(sim / "checkpoint" / "final_state.pt")
    b = torch.load(dep / "checkpoint" / "final_state.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    # the server's mirror (built from replies) equals the simulator's ledger
    assert _records(dep / "ledger.jsonl") == _records(sim / "ledger.jsonl")


def _assert_node_ledgers(sim: Path, deployment: Path, nodes: int) -> None:
    """Each owner's own ledger holds exactly its clients' records, equal to the simulator's."""
    want = _by_client(_records(sim / "ledger.jsonl"))
    seen = set()
    for i in range(nodes):
        own = _by_client(_records(deployment / "nodes" / f"node-{i}" / "ledger.jsonl"))
        assert set(own) == {str(c) for c in range(i, len(want), nodes)}
        for cid, recs in own.items():
            assert recs == want[cid]
            seen.add(cid)
    assert seen == set(want)


def test_deploy_local_cli_equals_the_simulator(tmp_path):
    """The issue's command, through the CLI: same metrics, ε, state and ledgers (ffa)."""
    sim = run(tiny_cfg(), tmp_path / "sim", progress=False, log=_quiet)
    out = tmp_path / "dep"
    cmd = [str(Path(sys.executable).with_name("dpfedlora")), "deploy", "local", str(TINY),
           "--supernodes", "2", "--out", str(out), "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    _assert_same_run(tmp_path / "sim", out, sim, summary)
    _assert_node_ledgers(tmp_path / "sim", out / "deployment", 2)
    # TLS and node authentication were on (each log starts with its command line)
    logs = out / "deployment" / "logs"
    superlink = (logs / "superlink.log").read_text().splitlines()[0]
    assert "--ssl-certfile" in superlink and "--enable-supernode-auth" in superlink
    assert "--insecure" not in superlink
    for i in range(2):
        node = (logs / f"supernode-{i}.log").read_text().splitlines()[0]
        assert "--root-certificates" in node and "--auth-supernode-private-key" in node
        assert "127.0.0.1" in node and "--insecure" not in node
    assert oct((out / "deployment" / "certs" / "supernode-0").stat().st_mode)[-3:] == "600"
    _assert_nothing_left(out / "deployment")


@pytest.mark.parametrize("method", ["fedsb", "flexlora"])
def test_deployed_methods_equal_the_simulator(tmp_path, method):
    from dpfedlora.deploy.local import LocalFederation

    overrides = [f"method.name={method}"]
    sim = run(tiny_cfg(*overrides), tmp_path / "sim", progress=False, log=_quiet)
    deployment = tmp_path / "deployment"
    with LocalFederation(deployment, 2, 4, log=_quiet) as fed:
        dep = fed.run(TINY, tmp_path / "dep", overrides=overrides)
    _assert_same_run(tmp_path / "sim", tmp_path / "dep", sim, dep)
    _assert_node_ledgers(tmp_path / "sim", deployment, 2)
    _assert_nothing_left(deployment)


def test_a_node_refuses_requests_beyond_its_own_budget(tmp_path):
    """Node 1's owner allows ε = 2.5: round 1 (ε 2.28) passes, round 2 (ε 2.97) is refused
    by the node whatever the server asks; it never records or trains round 2."""
    from dpfedlora.deploy.local import LocalFederation

    deployment = tmp_path / "deployment"
    with LocalFederation(deployment, 2, 4, log=_quiet, epsilon_budgets={1: 2.5}) as fed:
        summary = fed.run(TINY, tmp_path / "dep")
        # every listener of the federation (SuperLink, SuperNodes, workers) is on loopback
        from dpfedlora.deploy.local import leftover_pids

        ours = [*fed.pids(), *leftover_pids(deployment)]
        listening = _listening_addresses(ours)
        assert len(listening) >= 3  # the SuperLink and each SuperNode's runtime API
        assert all(
            a.startswith(("0100007F:", "00000000000000000000000001000000:")) for a in listening
        ), listening
    node1 = _records(deployment / "nodes" / "node-1" / "ledger.jsonl")
    assert sorted((r["client"], r["round"]) for r in node1) == [("1", 1), ("3", 1)]
    node0 = _records(deployment / "nodes" / "node-0" / "ledger.jsonl")
    assert sorted((r["client"], r["round"]) for r in node0) == [
        ("0", 1), ("0", 2), ("2", 1), ("2", 2)
    ]  # fmt: skip
    rows = _records(tmp_path / "dep" / "metrics.jsonl")
    assert rows[1]["skipped"] == ["1", "3"]
    log = (deployment / "nodes" / "node-1" / "worker.log").read_text()
    assert "round 2 client 1: skipped" in log and "round 2 client 3: skipped" in log
    # the owner's own ledger is the truth: its clients stay within the owner's budget
    own = Ledger(deployment / "nodes" / "node-1" / "ledger.jsonl", accountant="fastpld")
    assert all(own.epsilon(c, delta=1e-5) <= 2.5 for c in ("1", "3"))
    # the server's mirror agrees with the owners' ledgers
    mirror = _by_client(_records(tmp_path / "dep" / "ledger.jsonl"))
    for recs in (node0, node1):
        for cid, own_recs in _by_client(recs).items():
            assert mirror[cid] == own_recs
    eps = summary["epsilon_per_client"]
    assert eps["1"] < 2.5 < eps["0"]
    _assert_nothing_left(deployment)
