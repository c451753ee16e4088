import json
import subprocess
import sys

from tests.helpers import TINY


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dpfedlora", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_run_cli_json_summary(tmp_path):
    out = run_cli(
        "run",
        str(TINY),
        "--set",
        "method.name=fedsb",
        "--set",
        "train.local_steps=2",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # stdout is exactly one JSON document
    assert summary["method"] == "fedsb" and summary["rounds_completed"] == 2
    assert summary["max_epsilon"] <= 3.0
    # the run directory holds what it claims: the resolved config, the ledger the ε came from
    from accounting import Ledger
    from dpfedlora.config import load_config
    from dpfedlora.federation.rundir import config_hash

    saved = load_config(tmp_path / "r" / "config.yaml")
    assert saved.method.name == "fedsb" and saved.train.local_steps == 2
    import torch

    ckpt = torch.load(tmp_path / "r" / "checkpoint" / "state.pt", weights_only=False)
    assert ckpt["config_hash"] == config_hash(saved) and ckpt["round"] == 2
    ledger = Ledger(tmp_path / "r" / "ledger.jsonl", accountant="fastpld")
    assert len(ledger) == 4 * 2
    assert ledger.max_epsilon(delta=summary["delta"]) == summary["max_epsilon"]
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    # the human lines went to stderr
    assert "round 2/2" in out.stderr and "max ε" in out.stderr and "noise: seeded" in out.stderr


def test_run_cli_bad_config_exits_2(tmp_path):
    out = run_cli("run", str(TINY), "--set", "server.roundz=3")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "dpfedlora run: error: unknown config key `server.roundz`. Allowed under `server`: "
        "clients_per_round, rounds."
    ]
    out = run_cli("run", "nope.yaml")
    assert out.returncode == 2 and "no such file" in out.stderr and "Traceback" not in out.stderr
