"""Logging callbacks: what a run writes to experiment trackers besides ``metrics.jsonl``.

A callback has three hooks, called by the server (:class:`~dpfedlora.federation.Federation`)::

    on_run_start(cfg)     once the run directory exists (also on --resume)
    on_round(row)         after each round's row is in metrics.jsonl (the same dict)
    on_run_end(summary)   after summary.json is written; closes what the callback opened

Registry :data:`CALLBACKS` (``register_callback`` / ``make_callbacks``): name -> factory
``(cfg, run_dir) -> Callback``. A built-in's name is a switch of the config's ``logging``
section (``logging.tensorboard: true``; a test checks the names agree). Each tracker is an
optional extra, so :func:`check_available` refuses a run that enables one not installed with one
line naming the key and the pip command, before anything is spent.

What a tracker receives is :func:`scalars` of the row: every finite number in it, nested keys
joined by ``/`` (``max_epsilon``, ``epsilon_per_client/3``, ``tpr_at_fpr/3/0.01``,
``max_tpr_at_fpr/0.01``, ``bytes_up``, ``eval_accuracy``...), at step = the round.
A non-private run's ε = ∞ (and a NaN loss without diagnostics) is left out: trackers plot or
reject a non-finite point badly, and metrics.jsonl keeps it (as null).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..config import ConfigError, Experiment, to_dict
from .rundir import json_safe

__all__ = [
    "Callback",
    "CallbackList",
    "CALLBACKS",
    "register_callback",
    "make_callbacks",
    "check_available",
    "scalars",
]


class Callback(Protocol):
    def on_run_start(self, cfg: Experiment) -> None: ...

    def on_round(self, row: dict[str, Any]) -> None: ...

    def on_run_end(self, summary: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class _Entry:
    factory: Callable[[Experiment, Path], Callback]
    package: str | None  # the module that must import (None: nothing optional)
    extra: str | None  # the pip extra that installs it


CALLBACKS: dict[str, _Entry] = {}


def register_callback(
    name: str,
    factory: Callable[[Experiment, Path], Callback],
    *,
    package: str | None = None,
    extra: str | None = None,
) -> None:
    """Add a tracker. ``package``: the module it needs (checked before a run spends anything);
    ``extra``: the ``dpfedlora[...]`` extra that installs it, for the error message."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a callback name must be a non-empty string. Found {name!r}.")
    CALLBACKS[name] = _Entry(factory, package, extra or package)


def _enabled(cfg: Experiment) -> list[str]:
    return list(cfg.logging.enabled)


def check_available(cfg: Experiment) -> None:
    """Raise a one-line :class:`ConfigError` for an enabled tracker that is not installed."""
    for name in _enabled(cfg):
        entry = CALLBACKS.get(name)
        if entry is None:  # a switch with no registered tracker: a programming error
            raise ConfigError(
                f"`logging.{name}` has no registered callback. Registered: "
                f"{', '.join(sorted(CALLBACKS))}."
            )
        if entry.package and importlib.util.find_spec(entry.package) is None:
            raise ConfigError(
                f"`logging.{name}` = true needs the {entry.package} package, which is not "
                f"installed: pip install 'dpfedlora[{entry.extra}]', or set logging.{name}=false."
            )


def make_callbacks(cfg: Experiment, run_dir: str | os.PathLike[str]) -> dict[str, Callback]:
    """The callbacks ``cfg.logging`` enables, by name, writing under ``run_dir``."""
    check_available(cfg)
    return {name: CALLBACKS[name].factory(cfg, Path(run_dir)) for name in _enabled(cfg)}


class CallbackList:
    """Calls every callback's hook in turn. A tracker that raises is reported and dropped for
    the rest of the run: by then the round's spend is durable in the ledger and its row in
    metrics.jsonl, and a convenience must not abandon a private run half way."""

    def __init__(
        self, callbacks: dict[str, Callback], *, log: Callable[[str], None] = print
    ) -> None:
        self.callbacks = dict(callbacks)
        self.log = log

    def add(self, name: str, callback: Callback) -> None:
        self.callbacks[name] = callback

    def _call(self, hook: str, arg: Any) -> None:
        for name, cb in list(self.callbacks.items()):
            try:
                getattr(cb, hook)(arg)
            except Exception as exc:  # noqa: BLE001 - any tracker failure; see the class doc
                del self.callbacks[name]
                self.log(
                    f"warning: logging callback {name} failed in {hook} "
                    f"({type(exc).__name__}: {exc}); it is off for the rest of this run."
                )

    def on_run_start(self, cfg: Experiment) -> None:
        self._call("on_run_start", cfg)

    def on_round(self, row: dict[str, Any]) -> None:
        self._call("on_round", row)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self._call("on_run_end", summary)


def scalars(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of ``row`` (bools and lists aside), nested keys joined by ``/``;
    ``round`` is the step, not a scalar."""
    out: dict[str, float] = {}
    for key, value in row.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, tag + "/"))
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and tag != "round"
        ):
            out[tag] = float(value)
    return out


def _config_text(cfg: Experiment) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    keep = ("max_epsilon", "rounds_completed", "bytes_up", "bytes_down", "seconds")
    out = {k: summary[k] for k in keep if k in summary}
    return scalars({**out, "final": summary.get("final", {}), "risk": summary.get("risk", {})})


# ----------------------------------------------------------------------------- TensorBoard
def _code_block(text: str) -> str:
    """Four spaces each line: a Markdown code block (TensorBoard's text plugin renders
    Markdown, which would reflow YAML and JSON)."""
    return "".join("    " + line + "\n" for line in text.splitlines())


class TensorBoardCallback:
    """Scalars per round and the config as text, in ``<run dir>/tensorboard`` (read with
    ``tensorboard --logdir <run dir>``). Flushed every round, so a crash loses nothing logged."""

    def __init__(self, cfg: Experiment, run_dir: Path) -> None:
        self.dir = run_dir / "tensorboard"
        self.writer: Any = None

    def on_run_start(self, cfg: Experiment) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.dir))
        self.writer.add_text("config", _code_block(_config_text(cfg)), global_step=0)

    def on_round(self, row: dict[str, Any]) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=row["round"])
        self.writer.flush()

    def on_run_end(self, summary: dict[str, Any]) -> None:
        text = _code_block(json.dumps(json_safe(summary), indent=2))
        self.writer.add_text("summary", text, global_step=summary.get("rounds_completed", 0))
        self.writer.close()


# ----------------------------------------------------------------------------- W&B
class WandbCallback:
    """A Weights & Biases run in ``<run dir>/wandb``; ``WANDB_MODE=offline`` keeps it local
    (``wandb sync`` uploads later). Project: ``WANDB_PROJECT``, else dpfedlora."""

    def __init__(self, cfg: Experiment, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.run: Any = None

    def on_run_start(self, cfg: Experiment) -> None:
        import wandb

        self.run = wandb.init(
            dir=str(self.run_dir),
            project=os.environ.get("WANDB_PROJECT", "dpfedlora"),
            name=self.run_dir.name,
            config=to_dict(cfg),
        )

    def on_round(self, row: dict[str, Any]) -> None:
        self.run.log(scalars(row), step=row["round"])

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(_summary_scalars(summary))
        self.run.finish()


# ----------------------------------------------------------------------------- MLflow
_MLFLOW_BAD = re.compile(r"[^A-Za-z0-9_\-. /:]")
_MLFLOW_BATCH = 1000  # MLflow's limit on metrics per log_batch call


class MlflowCallback:
    """An MLflow run: a file store under ``<run dir>/mlruns`` unless ``MLFLOW_TRACKING_URI``
    names another (``mlflow ui --backend-store-uri <run dir>/mlruns``). Uses the client API,
    not mlflow's process-global active run, so runs in one process never mix."""

    def __init__(self, cfg: Experiment, run_dir: Path) -> None:
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        self.name = run_dir.name
        self.client: Any = None
        self.run_id = ""

    def on_run_start(self, cfg: Experiment) -> None:
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("file:"):
            # MLflow 3 refuses a file store unless opted in (it wants a database server or
            # sqlalchemy, which mlflow-skinny lacks); a run's own store needs neither
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(cfg.name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(cfg.name)
        self.run_id = self.client.create_run(exp_id, run_name=self.name).info.run_id
        self.client.log_text(self.run_id, _config_text(cfg), "config.yaml")

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        metrics = [Metric(_MLFLOW_BAD.sub("_", k), v, ms, step) for k, v in values.items()]
        for i in range(0, len(metrics), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _MLFLOW_BATCH])

    def on_round(self, row: dict[str, Any]) -> None:
        self._log(scalars(row), row["round"])

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self._log(
            {f"summary/{k}": v for k, v in _summary_scalars(summary).items()},
            summary.get("rounds_completed", 0),
        )
        self.client.log_text(self.run_id, json.dumps(json_safe(summary), indent=2), "summary.json")
        self.client.set_terminated(self.run_id)


register_callback("tensorboard", TensorBoardCallback, package="tensorboard")
register_callback("wandb", WandbCallback, package="wandb")
register_callback("mlflow", MlflowCallback, package="mlflow")
