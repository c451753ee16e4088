"""A seeded, stratified train / held-out split."""

from __future__ import annotations

import numpy as np

from ..config import ConfigError

__all__ = ["stratified_split"]


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping each class's share: (train indices, eval indices), both sorted."""
    if not 0 < fraction < 1:
        raise ConfigError(f"`data.eval_fraction` must be in (0, 1). Found {fraction!r}.")
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        held.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(held, dtype=np.int64))
