"""Loading a configured dataset as (train, held-out) tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import ConfigError, DataConfig, ModelConfig
from ..config.data_names import (
    BUILTIN_PREFIX,
    HUB_PREFIX,
    data_name_kind,
    file_extensions,
    looks_like_path,
)
from ..tasks import TASKS
from .rows import Rows, column
from .sources import read_source, synthetic_tokens
from .split import stratified_split
from .tensors import TensorData

__all__ = ["load_data", "load_records", "tokenize"]


def tokenize(rows: Rows, cfg: DataConfig, model: ModelConfig, tokenizer: Any) -> TensorData:
    """The task's tokenisation, plus the partition column when partitioning by users."""
    data = TASKS[model.task].tokenize(rows, cfg, model, tokenizer)
    if cfg.partition.kind == "by_column":
        data.groups = np.asarray(column(rows, cfg.partition.column, "partition.column"))
    return data


def _synthetic(cfg: DataConfig, model: ModelConfig, seed: int) -> TensorData:
    ids, mask, labels = synthetic_tokens(cfg, model, seed)
    return TASKS[model.task].synthetic(torch.from_numpy(ids), torch.from_numpy(mask), labels)


def _subsample(rows: Rows, num_examples: int, seed: int) -> Rows:
    n = len(next(iter(rows.values())))
    if not num_examples or num_examples >= n:
        return rows
    keep = np.sort(np.random.default_rng(seed).permutation(n)[:num_examples])
    return {k: [v[i] for i in keep] for k, v in rows.items()}


def _check_rows(rows: Rows, cfg: DataConfig, model: ModelConfig, tokenizer: Any) -> None:
    if not rows or not len(next(iter(rows.values()))):
        raise ConfigError(f"`data.name` = {cfg.name!r} holds no examples.")
    for key, name in TASKS[model.task].columns(cfg):
        column(rows, name, key)  # a missing column fails before any tokenising
    if tokenizer is None:
        raise ConfigError(
            f"`model.name` = {model.name!r} has no tokenizer, which dataset {cfg.name!r} needs. "
            "Use a pretrained model (e.g. builtin:minilm) or data.name=builtin:synthetic."
        )


def load_records(path: str, cfg: DataConfig, model: ModelConfig, tokenizer: Any) -> TensorData:
    """Every record of one local file (a data owner's own shard), tokenised as the config's
    task does; no split, no subsample. ``path``: .csv/.tsv/.json/.jsonl/.parquet."""
    from dataclasses import replace

    from ..config import PartitionConfig

    name = str(path)
    if not looks_like_path(name) or name.startswith((BUILTIN_PREFIX, HUB_PREFIX)):
        raise ConfigError(
            f"a data owner's `data-path` must be a local {file_extensions()} file. Found {path!r}."
        )
    try:
        data_name_kind("data-path", name)  # an unsupported extension: refused, never fetched
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # the owner's file is its shard: no partition column is needed
    own = replace(cfg, name=name, partition=PartitionConfig())
    rows, _ = read_source(own)
    _check_rows(rows, own, model, tokenizer)
    return tokenize(rows, own, model, tokenizer)


def load_data(
    cfg: DataConfig, model: ModelConfig, *, seed: int, tokenizer: Any = None
) -> tuple[TensorData, TensorData]:
    """(train, eval) tensors for the configured dataset."""
    if cfg.name == "builtin:synthetic":
        data = _synthetic(cfg, model, seed)
        tr, ev = stratified_split(data.class_labels, cfg.eval_fraction, seed)
        return data.subset(tr), data.subset(ev)
    train_rows, eval_rows = read_source(cfg)
    _check_rows(train_rows, cfg, model, tokenizer)
    data = tokenize(_subsample(train_rows, cfg.num_examples, seed), cfg, model, tokenizer)
    if eval_rows is not None:
        return data, tokenize(eval_rows, cfg, model, tokenizer)
    tr, ev = stratified_split(data.class_labels, cfg.eval_fraction, seed)
    return data.subset(tr), data.subset(ev)
