"""Privacy-utility sweeps: a grid of ordinary runs, resumable, in parallel processes.

A sweep file names a base config and a grid of dotted keys::

    base: ../configs/quickstart.yaml       # relative to the sweep file, or absolute
    grid:
      method.name: [fedit, ffa, fedsb, rolora]
      privacy.target_epsilon: [1, 3, 8, inf]   # inf = non-private (privacy.mode=none)
      seed: [0, 1, 2]

Settings that differ per method (Fed-SB's rank, each method's learning rate, a non-private
rate) go in ``cases``: a list of fixed override mappings, each crossed with the grid. A key a case
sets is dropped from the grid for that case, so a case may pin ``privacy.target_epsilon: inf``
with its own learning rate::

    cases:
      - {method.name: fedit, train.lr: 0.01}
      - {method.name: fedit, train.lr: 0.05, privacy.target_epsilon: inf}
      - {method.name: fedsb, method.rank: 48, train.lr: 0.02}
    grid:
      privacy.target_epsilon: [1, 3, 8]
      seed: [0, 1, 2]

Cells with the same resolved config are run once.

Each cell is a run directory ``<out>/cells/<config hash>``: its identity is the hash of the
resolved config, so rerunning skips completed cells and resumes incomplete ones, and a changed
base config yields new cells (reported, never mixed with the old results). A cell whose directory
was named by an older version of the config schema (a key added since, at its default value, so
the same run) keeps that directory: upgrading dpfedlora does not rerun a finished sweep. Each
cell runs in its own process (``dpfedlora run ... --resume``): a failed cell is reported with its
error and does not stop the sweep.

A sweep winds down at ``stop_after`` seconds or on SIGUSR1: no new cell starts, and each running
cell finishes its round, checkpoints and stops (its ``PAUSE`` file). Nothing spent is lost, so the
next sweep resumes those cells without leaving them short; stopping them inside a round (Ctrl-C,
SIGTERM, a machine that goes away) leaves that round's recorded spend unused.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, load_config, nest_overrides
from ..federation.resume import differences_from
from ..federation.rundir import RunDir, config_hash

__all__ = [
    "Cell",
    "cell_of",
    "cell_overrides",
    "load_sweep",
    "read_sweep",
    "run_sweep",
    "default_jobs",
    "locate_cells",
]


@dataclass(frozen=True)
class Cell:
    overrides: tuple[tuple[str, Any], ...]
    config_hash: str

    @property
    def name(self) -> str:
        return self.config_hash[:12]

    def as_set_args(self) -> list[str]:
        out = []
        for key, value in self.overrides:
            out += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"]
        return out


def cell_overrides(key: str, value: Any) -> list[tuple[str, Any]]:
    if key == "privacy.target_epsilon" and (
        (isinstance(value, str) and value.strip().lower() in ("inf", "infinity", ".inf"))
        or (isinstance(value, float) and math.isinf(value))
    ):
        return [("privacy.mode", "none"), ("privacy.target_epsilon", None)]
    return [(key, value)]


def read_sweep(path: str | Path) -> tuple[Path, dict[str, list[Any]], list[dict[str, Any]]]:
    """(base config path, grid, cases) of a sweep file, checked."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"base", "grid", "cases", "name"}
    if unknown:
        raise ConfigError(
            f"unknown sweep key(s) {sorted(unknown)}. Allowed: base, grid, cases, name."
        )
    grid = spec.get("grid", {}) or {}
    cases = spec.get("cases", [{}]) or [{}]
    if "base" not in spec or not isinstance(grid, dict) or not (grid or spec.get("cases")):
        raise ConfigError(
            f"{path}: a sweep needs `base: CONFIG` and a non-empty `grid` mapping or `cases` list."
        )
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        raise ConfigError(
            f"{path}: `cases` must be a list of mappings (dotted key: value). Found {cases!r}."
        )
    base = Path(spec["base"])
    base = base if base.is_absolute() else (path.parent / base).resolve()
    if not base.is_file():
        raise ConfigError(f"{path}: base config {str(base)!r} does not exist.")
    for k in grid:
        if not isinstance(grid[k], list) or not grid[k]:
            raise ConfigError(f"grid key {k!r} needs a non-empty list of values.")
    return base, grid, cases


def cell_of(base: Path, overrides: list[tuple[str, Any]]) -> Cell:
    """The cell of these overrides (in order) on ``base``; validates the resolved config."""
    cfg = load_config(base, nest_overrides(overrides))
    return Cell(tuple(overrides), config_hash(cfg))


def load_sweep(path: str | Path) -> tuple[Path, list[Cell]]:
    """(base config path, cells) of a sweep file."""
    base, grid, cases = read_sweep(path)
    cells, seen = [], set()
    for case in cases:
        keys = [k for k in grid if k not in case]  # the case's own value wins
        for combo in itertools.product(*(grid[k] for k in keys)):
            overrides: list[tuple[str, Any]] = []
            for k, v in [*case.items(), *zip(keys, combo)]:
                overrides += cell_overrides(k, v)
            cell = cell_of(base, overrides)
            if cell.config_hash not in seen:
                seen.add(cell.config_hash)
                cells.append(cell)
    return base, cells


def default_jobs() -> int:
    """Parallel cells: one per 2 cores and per 6 GB of memory (a MiniLM cell peaks near 3 GB)."""
    cores = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):  # pragma: no cover - non-POSIX
        mem_gb = 8.0
    return max(1, min(cores // 2, int(mem_gb // 6)))


def _started_config(cell_dir: Path) -> dict[str, Any] | None:
    try:
        cfg = yaml.safe_load((cell_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return cfg if isinstance(cfg, dict) else None


def locate_cells(out: Path, base: Path, cells: list[Cell]) -> dict[str, Path]:
    """Each cell's run directory (by config hash): ``<out>/cells/<hash>``, or an existing cell
    directory whose run has the same config but was started before a key with a default
    value joined the schema (its hash differs; its run, ledger and results are this cell's)."""
    root = out / "cells"
    where = {c.config_hash: root / c.name for c in cells}
    taken = {p.name for p in where.values()}
    others = sorted(root.iterdir()) if root.is_dir() else []
    orphans = {d: _started_config(d) for d in others if d.is_dir() and d.name not in taken}
    for cell in cells:
        if where[cell.config_hash].exists() or not orphans:
            continue
        cfg = load_config(base, nest_overrides(list(cell.overrides)))
        for d, started in list(orphans.items()):
            if started is not None and not differences_from(started, cfg):
                where[cell.config_hash] = d
                del orphans[d]
                break
    return where


# stops after which `dpfedlora run --resume` continues (a run writes its summary on these too)
RESUMABLE_STOPS = ("interrupted", "until_round", "paused")


def _status(cell_dir: Path) -> str:
    """done (finished: every round, or its budget or clients ran out), partial or new. A cell
    stopped by SIGTERM or Ctrl-C wrote a summary but is not done: the sweep resumes it."""
    summary = cell_dir / "summary.json"
    if summary.exists():
        try:
            reason = json.loads(summary.read_text()).get("stopped_reason")
        except (OSError, ValueError):
            reason = None
        return "partial" if reason in RESUMABLE_STOPS else "done"
    return "partial" if cell_dir.exists() else "new"


class _WindDown:
    """Once requested, running cells pause after their round and no new cell starts. The lock
    orders it against starts: a cell either starts before the request (and gets a PAUSE file)
    or never starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[Path] = set()
        self.requested = False
        self.not_started = 0
        self.started: list[Path] = []

    def request(self, *_signal: object) -> None:
        with self._lock:
            self.requested = True
            for cell_dir in self._running:
                RunDir(cell_dir).pause_file.touch()

    def start(self, cell_dir: Path) -> bool:
        with self._lock:
            if self.requested:
                self.not_started += 1
                return False
            cell_dir.mkdir(parents=True, exist_ok=True)
            RunDir(cell_dir).take_pause_request()  # left by an earlier sweep's wind-down
            self._running.add(cell_dir)
            self.started.append(cell_dir)
            return True

    def finish(self, cell_dir: Path) -> None:
        with self._lock:
            self._running.discard(cell_dir)
            RunDir(cell_dir).take_pause_request()  # a request that came after its last round


def _run_cell(
    base: Path, cell: Cell, cell_dir: Path, threads: int, wind_down: _WindDown | None = None
) -> tuple[Cell, str | None, float]:
    """Run one cell in its own process; the error line, or None. A cell the wind-down kept
    from starting returns the error None and 0 seconds, and stays new or partial."""
    from ..models.prefix_cache import STORE_ENV

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    # Cells share the frozen-prefix features (same model, same messages): computed once, kept
    # inside the sweep directory because they are features of the private records.
    env.setdefault(STORE_ENV, str(cell_dir.parent.parent / "prefix-cache"))
    cmd = [
        sys.executable,
        "-m",
        "dpfedlora",
        "run",
        str(base),
        *cell.as_set_args(),
        "--out",
        str(cell_dir),
        "--resume",
        "--no-progress",
    ]
    wind_down = wind_down or _WindDown()
    if not wind_down.start(cell_dir):
        return cell, None, 0.0
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    finally:
        wind_down.finish(cell_dir)
    (cell_dir / "stdout.log").write_text(proc.stdout + proc.stderr)
    error = None
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        error = lines[-1] if lines else f"exit status {proc.returncode}"
        (cell_dir / "error.txt").write_text(error + "\n")
    return cell, error, time.perf_counter() - t0


def _run_cells(
    base: Path,
    todo: list[Cell],
    where: dict[str, Path],
    jobs: int,
    threads: int,
    wind_down: _WindDown,
    stop_after: float | None,
    progress: bool,
    log,
) -> dict[str, str]:
    """Run ``todo`` on ``jobs`` workers until done or wound down; the failed cells' errors."""
    failed: dict[str, str] = {}
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="cells", unit="cell")
    timer = threading.Timer(stop_after, wind_down.request) if stop_after is not None else None
    on_signal = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1")
    previous = signal.signal(signal.SIGUSR1, wind_down.request) if on_signal else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [
                pool.submit(_run_cell, base, c, where[c.config_hash], threads, wind_down)
                for c in todo
            ]
            for fut in as_completed(futures):
                cell, error, seconds = fut.result()
                if error:
                    failed[where[cell.config_hash].name] = error
                    (bar.write if bar else log)(
                        f"cell {where[cell.config_hash].name} {dict(cell.overrides)} FAILED: "
                        f"{error}"
                    )
                if bar:
                    bar.update(1)
    finally:
        if timer is not None:
            timer.cancel()
        if on_signal:
            signal.signal(signal.SIGUSR1, previous)
    if bar:
        bar.close()
    return failed


def run_sweep(
    sweep_file: str | Path,
    out: str | Path,
    *,
    jobs: int | None = None,
    progress: bool = True,
    stop_after: float | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the cells not yet done. ``stop_after`` (seconds from now) or SIGUSR1 winds the sweep
    down: see the module's docstring."""
    if stop_after is not None and not 0 < stop_after < math.inf:  # a Timer cannot wait inf
        raise ConfigError(f"stop_after must be a positive number of seconds. Found {stop_after}.")
    base, cells = load_sweep(sweep_file)
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    manifest_path = out / "sweep.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        old_by_overrides = {json.dumps(c["overrides"]): c["config_hash"] for c in old["cells"]}
        changed = [
            c
            for c in cells
            if old_by_overrides.get(json.dumps(c.overrides), c.config_hash) != c.config_hash
        ]
        if changed:
            log(
                f"the resolved config of {len(changed)} cell(s) changed since the last run "
                "(base config edited?): they run as new cells; the old results stay in their "
                "own directories and are not in this sweep's report."
            )
    where = locate_cells(out, base, cells)
    manifest = {
        "sweep_file": str(Path(sweep_file).resolve()),
        "base": str(base),
        "cells": [
            {
                "overrides": c.overrides,
                "config_hash": c.config_hash,
                "dir": where[c.config_hash].relative_to(out).as_posix(),
            }
            for c in cells
        ],
    }
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    todo = [c for c in cells if _status(where[c.config_hash]) != "done"]
    skipped = len(cells) - len(todo)
    jobs = jobs or default_jobs()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log(f"{len(cells)} cells: {skipped} already complete, {len(todo)} to run, {jobs} in parallel")
    wind_down = _WindDown()
    failed = _run_cells(base, todo, where, jobs, threads, wind_down, stop_after, progress, log)
    paused = [d for d in wind_down.started if d.name not in failed and _status(d) == "partial"]
    return {
        "cells": len(cells),
        "ran": len(todo) - wind_down.not_started,
        "skipped": skipped,
        "failed": failed,
        "wound_down": wind_down.requested,
        # cells that stopped at a round boundary or never started: the next sweep runs them
        "unfinished": len(paused) + wind_down.not_started,
        "dirs": {h: str(d) for h, d in where.items()},
    }
