"""Raw rows (column -> values) and the checks that name a missing column or a bad label."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import ConfigError, DataConfig

__all__ = ["Rows", "column", "class_ids"]

# A source returns (train_rows, eval_rows or None): dicts of column -> list.
Rows = dict[str, list[Any]]


def column(rows: Rows, name: str, key: str) -> list[Any]:
    if name not in rows:
        raise ConfigError(
            f"column {name!r} (data.{key}) not found. Columns: {', '.join(sorted(rows))}."
        )
    return rows[name]


def class_ids(rows: Rows, cfg: DataConfig, num_labels: int) -> np.ndarray:
    if cfg.label_column not in rows:
        raise ConfigError(
            f"column {cfg.label_column!r} (data.label_column) not found. Columns: "
            f"{', '.join(sorted(rows))}."
        )
    raw = rows[cfg.label_column]
    if cfg.label_names:
        lookup = {name: i for i, name in enumerate(cfg.label_names)}
        unknown = sorted({str(v) for v in raw} - set(lookup))
        if unknown:
            raise ConfigError(
                f"labels {unknown[:5]} are not in `data.label_names` {list(cfg.label_names)}."
            )
        ids = np.asarray([lookup[str(v)] for v in raw], dtype=np.int64)
    else:
        try:
            ids = np.asarray(raw, dtype=np.int64)
        except (TypeError, ValueError):
            names = sorted({str(v) for v in raw})
            raise ConfigError(
                f"labels in {cfg.label_column!r} are not integers (found e.g. {names[:3]}). "
                f"Set `data.label_names`, e.g. {names[:num_labels]}."
            ) from None
    if ids.min() < 0 or ids.max() >= num_labels:
        raise ConfigError(
            f"labels range over {int(ids.min())}..{int(ids.max())} but the head has "
            f"`model.num_labels` = {num_labels}. Set model.num_labels to {int(ids.max()) + 1}."
        )
    return ids
