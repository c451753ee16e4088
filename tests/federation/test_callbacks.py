"""Logging callbacks: the registry agrees with the config, a tracker switched on but not
installed is a one-line config error before anything is spent, rows become scalars, a failing
tracker never stops a run; TensorBoard (and W&B, MLflow where installed) write what
metrics.jsonl holds."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace

import pytest

from dpfedlora.cli import main
from dpfedlora.config import ConfigError, Experiment, LoggingConfig, load_config, schema
from dpfedlora.federation import callbacks as cb
from dpfedlora.federation.resume import differences_from
from dpfedlora.federation.rundir import config_hash
from tests.helpers import TINY, tiny_cfg

ROW = {
    "round": 3,
    "clients": 2,
    "skipped": ["1"],
    "faulty": [],
    "train_loss": math.nan,
    "eval_accuracy": 0.75,
    "max_epsilon": 1.5,
    "epsilon_per_client": {"0": 1.5, "1": 0.0},
    "tpr_at_fpr": {"0": {"0.01": 0.05}, "1": {"0.01": 0.01}},
    "max_tpr_at_fpr": {"0.01": 0.05},
    "bytes_up": 1000,
    "bytes_down": 2000,
}
SUMMARY = {
    "rounds_completed": 3,
    "max_epsilon": 1.5,
    "final": {"accuracy": 0.75},
    "risk": {"tpr_at_fpr": {"0.01": 0.05}, "advantage": 0.04},
    "bytes_up": 1000,
    "bytes_down": 2000,
    "seconds": 1.0,
}


def test_the_registry_holds_exactly_the_switches_the_config_validates():
    assert sorted(cb.CALLBACKS) == sorted(schema.LOGGERS)
    assert sorted(f.name for f in fields(LoggingConfig)) == sorted(schema.LOGGERS)
    for name, entry in cb.CALLBACKS.items():
        assert entry.package and entry.extra == name  # pip install 'dpfedlora[<name>]'


def test_logging_switches_are_validated_and_change_no_hash_and_block_no_resume():
    with pytest.raises(ConfigError, match="`logging.tensorboard` must be true or false"):
        load_config(TINY, ["logging.tensorboard=sometimes"])
    with pytest.raises(ConfigError, match="`logging.wandb` must be true or false"):
        LoggingConfig(wandb=1)
    with pytest.raises(ConfigError, match="unknown config key `logging.neptune`"):
        load_config(TINY, ["logging.neptune=true"])
    on = tiny_cfg("logging.tensorboard=true", "logging.mlflow=true")
    off = tiny_cfg()
    assert on.logging.enabled == ("tensorboard", "mlflow") and off.logging.enabled == ()
    assert config_hash(on) == config_hash(off)
    from dpfedlora.config import to_dict

    assert differences_from(to_dict(off), on) == []
    assert differences_from(to_dict(off), tiny_cfg("server.rounds=3")) == ["server.rounds: 2 -> 3"]


def _missing(monkeypatch, name: str) -> None:
    entry = cb.CALLBACKS[name]
    monkeypatch.setitem(cb.CALLBACKS, name, replace(entry, package="dpfedlora_no_such_module"))


def test_a_tracker_not_installed_is_one_line_naming_the_key_and_the_extra(monkeypatch):
    _missing(monkeypatch, "wandb")
    cfg = tiny_cfg("logging.wandb=true")
    with pytest.raises(ConfigError) as err:
        cb.check_available(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("`logging.wandb` = true needs the dpfedlora_no_such_module package")
    assert "pip install 'dpfedlora[wandb]'" in msg and "logging.wandb=false" in msg
    cb.check_available(tiny_cfg())  # nothing enabled: nothing needed


def test_the_run_verb_refuses_it_with_exit_2_before_anything_is_written(
    monkeypatch, tmp_path, capsys
):
    _missing(monkeypatch, "mlflow")
    out = tmp_path / "r"
    argv = ["run", str(TINY), "--no-progress", "--out", str(out), "--set", "logging.mlflow=true"]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "dpfedlora[mlflow]" in err
    assert not out.exists()  # no run directory, no ledger record


def test_scalars_are_every_finite_number_of_the_row_with_nested_keys_joined():
    assert cb.scalars(ROW) == {
        "clients": 2.0,
        "eval_accuracy": 0.75,
        "max_epsilon": 1.5,
        "epsilon_per_client/0": 1.5,
        "epsilon_per_client/1": 0.0,
        "tpr_at_fpr/0/0.01": 0.05,
        "tpr_at_fpr/1/0.01": 0.01,
        "max_tpr_at_fpr/0.01": 0.05,
        "bytes_up": 1000.0,
        "bytes_down": 2000.0,
    }  # round is the step; NaN loss, ∞ and lists are left out
    assert "max_epsilon" not in cb.scalars({**ROW, "max_epsilon": math.inf})


def test_a_failing_tracker_is_reported_once_and_dropped_the_others_go_on():
    class Broken:
        def on_run_start(self, cfg):
            pass

        def on_round(self, row):
            raise OSError("disk full")

        def on_run_end(self, summary):
            raise AssertionError("never called: dropped")

    class Fine:
        rows = 0

        def on_run_start(self, cfg):
            pass

        def on_round(self, row):
            self.rows += 1

        def on_run_end(self, summary):
            pass

    log: list[str] = []
    fine = Fine()
    cbs = cb.CallbackList({"broken": Broken(), "fine": fine}, log=log.append)
    cbs.on_run_start(Experiment())
    cbs.on_round(ROW)
    cbs.on_round(ROW)
    cbs.on_run_end(SUMMARY)
    assert fine.rows == 2 and list(cbs.callbacks) == ["fine"]
    assert log == [
        "warning: logging callback broken failed in on_round (OSError: disk full); it is off "
        "for the rest of this run."
    ]


def _tb_scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_callback_writes_the_rows_scalars_and_the_config(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny_cfg("logging.tensorboard=true")
    cbs = cb.CallbackList(cb.make_callbacks(cfg, tmp_path))
    cbs.on_run_start(cfg)
    cbs.on_round(ROW)
    cbs.on_run_end(SUMMARY)
    acc = _tb_scalars(tmp_path / "tensorboard")
    assert set(acc.Tags()["scalars"]) == set(cb.scalars(ROW))
    for tag, value in cb.scalars(ROW).items():
        (event,) = acc.Scalars(tag)
        assert event.step == 3 and event.value == pytest.approx(value, rel=1e-6)
    (config,) = acc.Tensors("config/text_summary")
    assert "tensorboard: true" in config.tensor_proto.string_val[0].decode()


@pytest.mark.slow
def test_a_tiny_run_with_tensorboard_on_writes_the_metrics_rows(tmp_path):
    """Done-when of issue 27: TensorBoard's own reader loads the run's events, and the per-round
    max ε and TPR scalars equal metrics.jsonl's."""
    pytest.importorskip("tensorboard")
    from dpfedlora.federation import run

    cfg = tiny_cfg("server.rounds=2", "train.local_steps=2", "logging.tensorboard=true")
    run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    acc = _tb_scalars(tmp_path / "r" / "tensorboard")
    for tag in (
        "max_epsilon",
        "max_tpr_at_fpr/0.01",
        "max_tpr_at_fpr/0.001",
        "epsilon_per_client/0",
        "tpr_at_fpr/3/0.1",
        "bytes_up",
        "bytes_down",
        "eval_accuracy",
    ):
        got = {e.step: e.value for e in acc.Scalars(tag)}
        want = {r["round"]: cb.scalars(r)[tag] for r in rows}
        assert got == pytest.approx(want, rel=1e-6), tag  # float32 in the events file
    assert len(rows) == 2 and rows[1]["max_epsilon"] > rows[0]["max_epsilon"] > 0
    assert acc.Tensors("summary/text_summary")


def test_mlflow_callback_logs_to_a_file_store_under_the_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_cfg("logging.mlflow=true")
    cbs = cb.CallbackList(cb.make_callbacks(cfg, tmp_path))
    cbs.on_run_start(cfg)
    cbs.on_round(ROW)
    cbs.on_run_end(SUMMARY)
    assert list(cbs.callbacks) == ["mlflow"]  # none failed
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    run_id = cbs.callbacks["mlflow"].run_id
    for tag, value in cb.scalars(ROW).items():
        (m,) = client.get_metric_history(run_id, tag)
        assert m.step == 3 and m.value == pytest.approx(value)
    assert client.get_run(run_id).info.status == "FINISHED"


def test_wandb_callback_runs_offline_under_the_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_cfg("logging.wandb=true")
    cbs = cb.CallbackList(cb.make_callbacks(cfg, tmp_path))
    cbs.on_run_start(cfg)
    cbs.on_round(ROW)
    cbs.on_run_end(SUMMARY)
    assert list(cbs.callbacks) == ["wandb"]  # none failed
    assert list((tmp_path / "wandb").glob("offline-run-*/*.wandb"))
