"""Scoring an exported model (``dpfedlora evaluate``) on the run's held-out split or a file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .calibration import calibration_inputs
from .config import load_config
from .data.load import load_data, tokenize
from .data.sources import read_source
from .data.tensors import TensorData
from .evaluate import evaluate
from .export import export_run, load_exported
from .models.builders import build_model
from .tasks import TASKS

__all__ = ["score_export", "held_out"]


def held_out(run_dir: str | Path, data_file: str | None = None) -> TensorData:
    """The run's held-out split (rebuilt from its seeded config), or every row of a file."""
    cfg = load_config(Path(run_dir) / "config.yaml")
    tokenizer = build_model(cfg.model, seed=cfg.seed).tokenizer
    if data_file is None:
        return load_data(cfg.data, cfg.model, seed=cfg.data_seed, tokenizer=tokenizer)[1]
    data_cfg = replace(cfg.data, name=str(data_file))
    rows, _ = read_source(data_cfg)
    return tokenize(rows, data_cfg, cfg.model, tokenizer)


def score_export(run_dir: str | Path, out: str | Path, *, data_file: str | None = None) -> dict:
    """Metrics of the exported model (exported into ``out`` first if it holds none)."""
    cfg = load_config(Path(run_dir) / "config.yaml")
    if not (Path(out) / "export.json").is_file():
        export_run(run_dir, out)
    model = load_exported(out, cfg)
    tokenizer = build_model(cfg.model, seed=cfg.seed).tokenizer
    ids = TASKS[cfg.model.task].label_token_ids(tokenizer, cfg.data, cfg.model)
    return evaluate(
        model,
        held_out(run_dir, data_file),
        task=cfg.model.task,
        num_labels=cfg.model.num_labels,
        label_token_ids=ids,
        calibration=calibration_inputs(tokenizer, cfg.data, cfg.model),
    )
