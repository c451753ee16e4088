"""Sweeps: expansion, resume after a kill (only missing cells run), report from the ledgers."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpfedlora.config import ConfigError
from dpfedlora.experiments.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[2]
TINY_SWEEP = ROOT / "examples" / "sweeps" / "tiny.yaml"


def test_expansion_and_inf_means_non_private(tmp_path):
    base, cells = load_sweep(TINY_SWEEP)
    assert base == ROOT / "configs" / "tiny.yaml"
    assert len(cells) == 8 and len({c.config_hash for c in cells}) == 8
    inf_cells = [c for c in cells if ("privacy.mode", "none") in c.overrides]
    assert len(inf_cells) == 4


def test_bad_sweep_files(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("base: nope.yaml\ngrid: {seed: [0]}\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(f)
    f.write_text(f"base: {ROOT / 'configs' / 'tiny.yaml'}\ngrid: {{server.roundz: [1]}}\n")
    with pytest.raises(ConfigError, match="unknown config key `server.roundz`"):
        load_sweep(f)


def test_a_cell_started_before_a_schema_key_was_added_keeps_its_directory(tmp_path):
    """Upgrading dpfedlora adds config keys (at defaults that keep the old behaviour): the hash
    of every cell changes, but a finished cell is the same run and must not run again."""
    import yaml

    from dpfedlora.config import load_config, nest_overrides, to_dict
    from dpfedlora.experiments.sweep import locate_cells

    base, cells = load_sweep(TINY_SWEEP)
    out = tmp_path / "sweep"
    a, b, c = cells[0], cells[1], cells[2]

    def started(cell, **edits):  # the resolved config a run wrote to its config.yaml
        cfg = to_dict(load_config(base, nest_overrides(list(cell.overrides))))
        for dotted, value in edits.items():
            *path, leaf = dotted.split("__")
            node = cfg
            for k in path:
                node = node[k]
            if value is None:
                del node[leaf]  # the key did not exist yet
            else:
                node[leaf] = value
        return cfg

    old = {
        "0ld0ld0ld0ld": started(a, model__label_head=None, data__public_seed=None),
        "d1ffd1ffd1ff": started(b, model__label_head=None, train__lr=0.5),  # another run
        "3a5e3a5e3a5e": started(c, model__label_head=True),  # not at the default: another run
    }
    for name, cfg in old.items():
        (out / "cells" / name).mkdir(parents=True)
        (out / "cells" / name / "config.yaml").write_text(yaml.safe_dump(cfg))
    where = locate_cells(out, base, cells)
    assert where[a.config_hash].name == "0ld0ld0ld0ld"
    assert where[b.config_hash].name == b.name and where[c.config_hash].name == c.name
    assert all(where[x.config_hash].name == x.name for x in cells[3:])
    # a cell whose own directory exists keeps it, even if an old one matches too
    (out / "cells" / a.name).mkdir()
    assert locate_cells(out, base, cells)[a.config_hash].name == a.name


def test_cases_cross_the_grid_and_pin_their_own_keys(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        f"base: {ROOT / 'configs' / 'tiny.yaml'}\n"
        "cases:\n"
        "  - {method.name: fedit, train.lr: 0.02}\n"
        "  - {method.name: fedit, train.lr: 0.05, privacy.target_epsilon: inf}\n"
        "  - {method.name: fedsb, method.rank: 8, train.lr: 0.02}\n"
        "  - {method.name: fedsb, method.rank: 8, train.lr: 0.02}\n"  # a duplicate: run once
        "grid:\n"
        "  privacy.target_epsilon: [1, 3]\n"
        "  seed: [0, 1]\n"
    )
    _, cells = load_sweep(f)
    rows = [dict(c.overrides) for c in cells]
    # fedit DP: 2 ε x 2 seeds; fedit non-private: its ε pinned, 2 seeds; fedsb: 2 x 2, once
    assert len(cells) == 4 + 2 + 4 == len({c.config_hash for c in cells})
    private_fedit = [r for r in rows if r["method.name"] == "fedit" and "privacy.mode" not in r]
    assert {(r["privacy.target_epsilon"], r["seed"]) for r in private_fedit} == {
        (1, 0),
        (1, 1),
        (3, 0),
        (3, 1),
    }
    assert all(r["train.lr"] == 0.02 for r in private_fedit)
    plain = [r for r in rows if r.get("privacy.mode") == "none"]
    assert len(plain) == 2 and all(r["train.lr"] == 0.05 for r in plain)
    assert all(r["method.rank"] == 8 for r in rows if r["method.name"] == "fedsb")
    f.write_text(f"base: {ROOT / 'configs' / 'tiny.yaml'}\ncases: [fedit]\n")
    with pytest.raises(ConfigError, match="`cases` must be a list of mappings"):
        load_sweep(f)


def _sweep_cmd(out, jobs=1):
    return [
        sys.executable,
        "-m",
        "dpfedlora",
        "sweep",
        str(TINY_SWEEP),
        "--out",
        str(out),
        "--jobs",
        str(jobs),
        "--no-progress",
    ]


@pytest.mark.slow
def test_killed_sweep_resumes_only_missing_cells(tmp_path):
    out = tmp_path / "sw"
    proc = subprocess.Popen(
        _sweep_cmd(out),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    done = []
    while time.time() < deadline:
        done = list(out.glob("cells/*/summary.json"))
        if len(done) >= 2:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running cell
    proc.wait()
    completed = len(list(out.glob("cells/*/summary.json")))
    assert 2 <= completed < 8
    rerun = subprocess.run(_sweep_cmd(out, jobs=2), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    assert f"ran {8 - completed}, skipped {completed}" in rerun.stdout
    assert len(list(out.glob("cells/*/summary.json"))) == 8

    # the report's ε column comes from each cell's ledger and never exceeds the target
    rows = list(csv.DictReader(open(out / "report.csv")))
    cells = [r for r in rows if r["kind"] == "cell"]
    groups = [r for r in rows if r["kind"] == "group"]
    assert len(cells) == 8 and len(groups) == 4
    # the cell killed mid-round may end short (its interrupted round's spend stays counted, so
    # a client is refused on resume): listed, not averaged; every other cell is complete
    short = [r for r in cells if r["status"] != "done"]
    assert len(short) <= 1 and all(r["status"].startswith("short") for r in short)
    for r in cells:
        if r["target_epsilon"] != "inf":
            assert 0 < float(r["spent_epsilon"]) <= float(r["target_epsilon"])
        else:
            assert r["spent_epsilon"] == "inf"
    for col in ("method", "target_epsilon", "spent_epsilon", "balanced_accuracy", "bytes_up"):
        assert col in rows[0]
    md = (out / "report.md").read_text()
    for r in cells:  # one markdown row per complete cell, with its ledger ε, after the groups
        row = f"| {r['cell']} | {r['seed']} | {r['method']} | {r['target_epsilon']} | "
        assert (row in md) == (r["status"] == "done")
    assert md.count("± ") >= 4 and "s in rounds" in md
    assert (out / "plots" / "balanced_accuracy_vs_epsilon.png").exists()
    assert (out / "plots" / "balanced_accuracy_vs_bytes.svg").exists()


def test_report_epsilon_comes_from_the_ledger(tmp_path):
    """Tamper with a summary's ε: the report still shows the ledger's number."""
    import json

    from dpfedlora.experiments.report import build_report
    from dpfedlora.federation import run
    from tests.helpers import tiny_cfg

    out = tmp_path / "sw"
    cfg = tiny_cfg("server.rounds=1", "train.local_steps=2")
    run(cfg, out / "cells" / "a", progress=False, log=lambda s: None)
    (out / "sweep.json").write_text(
        json.dumps({"cells": [{"overrides": [["seed", 0]], "config_hash": "x", "dir": "cells/a"}]})
    )
    s = json.loads((out / "cells" / "a" / "summary.json").read_text())
    true_eps = s["max_epsilon"]
    s["max_epsilon"] = 0.001
    (out / "cells" / "a" / "summary.json").write_text(json.dumps(s))
    rows, groups = build_report(out)
    assert rows[0]["spent_epsilon"] == pytest.approx(true_eps, rel=1e-9)
    assert groups[0]["spent_epsilon"] == pytest.approx(true_eps, rel=1e-9)


def test_a_cell_stopped_by_a_signal_is_resumed_and_a_short_cell_stays_out_of_the_means(tmp_path):
    """SIGTERM or Ctrl-C stops a run at a safe point and it writes its summary: the sweep must
    still resume it. A cell that ended with fewer rounds than planned (its budget ran out
    after an interrupted round's spend) is listed, not averaged with complete cells."""
    import json
    import shutil

    from dpfedlora.experiments.report import build_report, write_report
    from dpfedlora.experiments.sweep import _status
    from dpfedlora.federation import run
    from tests.helpers import tiny_cfg

    out = tmp_path / "sw"
    cfg = tiny_cfg("server.rounds=2", "train.local_steps=2")
    run(cfg, out / "cells" / "a", progress=False, log=lambda s: None)
    assert _status(out / "cells" / "a") == "done"
    shutil.copytree(out / "cells" / "a", out / "cells" / "b")
    summary = out / "cells" / "b" / "summary.json"
    s = json.loads(summary.read_text())
    for reason, status in (("interrupted", "partial"), ("until_round", "partial"),
                           ("budget_exhausted", "done")):  # fmt: skip
        summary.write_text(json.dumps({**s, "stopped_reason": reason}))
        assert _status(out / "cells" / "b") == status
    summary.write_text(
        json.dumps({**s, "rounds_completed": 1, "stopped_reason": "budget_exhausted",
                    "final": {**s["final"], "balanced_accuracy": 0.0}})
    )  # fmt: skip
    cells = [{"overrides": [["seed", i]], "config_hash": n, "dir": f"cells/{n}"}
             for i, n in enumerate("ab")]  # fmt: skip
    (out / "sweep.json").write_text(json.dumps({"cells": cells}))
    rows, groups = build_report(out)
    assert rows[1]["status"] == "short: 1 of 2 rounds (budget_exhausted)"
    assert groups[0]["seeds"] == 1
    assert groups[0]["balanced_accuracy"] == pytest.approx(s["final"]["balanced_accuracy"])
    result = write_report(out)
    assert result["short"] == 1 and result["violations"] == 0
    assert "- cell b short: 1 of 2 rounds" in (out / "report.md").read_text()
    # every round done, but a client refused one for budget: short as well
    summary.write_text(json.dumps(s))
    metrics = out / "cells" / "b" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    last = json.loads(lines[-1])
    metrics.write_text("\n".join([*lines[:-1], json.dumps({**last, "skipped": ["0"]})]) + "\n")
    rows, groups = build_report(out)
    assert rows[0]["status"] == "done"
    assert rows[1]["status"] == "short: 1 client-round(s) skipped for budget or failed"
    assert groups[0]["seeds"] == 1


def test_report_time_of_a_resumed_cell_counts_every_round(tmp_path):
    """A cell run in two processes: the summary's seconds cover the second only; the report's
    time in rounds adds the rounds of both, as metrics.jsonl recorded them."""
    import json

    from dpfedlora.experiments.report import build_report
    from dpfedlora.federation import run
    from tests.helpers import tiny_cfg

    out = tmp_path / "sw"
    cfg = tiny_cfg("server.rounds=2", "train.local_steps=2")
    first = run(cfg, out / "cells" / "a", until_round=1, progress=False, log=lambda s: None)
    second = run(cfg, out / "cells" / "a", resume=True, progress=False, log=lambda s: None)
    assert first["rounds_completed"] == 1 and second["rounds_completed"] == 2
    (out / "sweep.json").write_text(
        json.dumps({"cells": [{"overrides": [["seed", 0]], "config_hash": "a", "dir": "cells/a"}]})
    )
    rows, groups = build_report(out)
    recorded = [
        json.loads(x) for x in (out / "cells" / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in recorded] == [1, 2]
    assert rows[0]["wall_seconds"] == second["seconds"]
    assert rows[0]["round_seconds"] == pytest.approx(sum(r["seconds"] for r in recorded))
    # the first process's round is in it: more than the second process's round alone
    assert rows[0]["round_seconds"] > recorded[1]["seconds"]
    assert groups[0]["round_seconds"] == pytest.approx(rows[0]["round_seconds"])


def _two_cell_sweep(tmp_path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text(
        f"base: {ROOT / 'configs' / 'tiny.yaml'}\n"
        "grid:\n  server.rounds: [2]\n  train.local_steps: [5]\n  seed: [0, 1]\n"
    )
    return path


def test_a_sweep_winds_down_at_its_deadline_and_the_rerun_leaves_no_cell_short(tmp_path):
    """At ``stop_after`` no new cell starts and a running one pauses after its round; the rerun
    finishes every cell with every client-round trained (nothing spent was lost)."""
    from dpfedlora.experiments.report import write_report
    from dpfedlora.experiments.sweep import _status, run_sweep

    sweep, out = _two_cell_sweep(tmp_path), tmp_path / "sw"
    first = run_sweep(sweep, out, jobs=1, progress=False, stop_after=0.01, log=lambda s: None)
    assert first["wound_down"] and first["unfinished"] == 2 and not first["failed"]
    cells = [Path(d) for d in first["dirs"].values()]
    assert all(_status(d) != "done" for d in cells)
    for d in cells:  # a cell that started trained a round, then paused
        if (d / "summary.json").exists():
            s = json.loads((d / "summary.json").read_text())
            assert s["stopped_reason"] == "paused" and s["rounds_completed"] == 1
        assert not (d / "PAUSE").exists()
    report = write_report(out)
    assert report["incomplete"] == 2 and report["short"] == 0  # paused or never started
    second = run_sweep(sweep, out, jobs=1, progress=False, log=lambda s: None)
    assert not second["wound_down"] and second["unfinished"] == 0
    assert second["ran"] == 2 and all(_status(d) == "done" for d in cells)
    report = write_report(out)
    assert report["short"] == 0 and report["incomplete"] == 0 and report["violations"] == 0


def test_sigusr1_winds_a_sweep_down(tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "dpfedlora", "sweep", str(_two_cell_sweep(tmp_path))]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "--jobs", "1", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not any(  # the first cell has trained a round
        p.stat().st_size for p in out.glob("cells/*/metrics.jsonl")
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    # the running cell paused (or had just finished) and the other never started
    assert "wound down: " in stdout and "rerun the same command" in stdout
    assert "ran 1," in stdout


def test_stop_after_must_be_positive(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "dpfedlora", "sweep", str(TINY_SWEEP), "--stop-after", "0",
         "--out", str(tmp_path / "sw")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 2
    assert "--stop-after" in res.stderr and "Found 0.0" in res.stderr
    assert not (tmp_path / "sw").exists()  # nothing written


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples" / "sweeps").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_example_sweep_file_resolves_to_valid_cells(path):
    base, cells = load_sweep(path)  # every cell's resolved config is validated here
    assert base.is_file() and cells
    assert len({c.config_hash for c in cells}) == len(cells)
