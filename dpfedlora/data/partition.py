"""Partitioning a dataset across clients (seeded): iid (optionally size-skewed), Dirichlet on
the label, pathological (k labels per client), and natural users (by a column).

Every partitioner returns one sorted index array per client, covering each example at most
once; all draws come from the given numpy generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..config import ConfigError, DataConfig

__all__ = ["PARTITIONERS", "partition", "label_histogram"]

Partitioner = Callable[
    [np.ndarray, np.ndarray | None, int, DataConfig, np.random.Generator], list[np.ndarray]
]


def _iid(labels, groups, k, cfg, rng) -> list[np.ndarray]:
    """Uniformly shuffled shards; with ``size_skew`` > 0, sizes ∝ lognormal(0, size_skew)."""
    perm = rng.permutation(len(labels))
    if cfg.partition.size_skew > 0:
        props = rng.lognormal(0.0, cfg.partition.size_skew, size=k)
        cuts = (np.cumsum(props / props.sum())[:-1] * len(perm)).astype(int)
        parts = np.split(perm, cuts)
    else:
        parts = np.array_split(perm, k)
    return [np.sort(p) for p in parts]


def _dirichlet(labels, groups, k, cfg, rng) -> list[np.ndarray]:
    """Per class, split its examples across clients with proportions ~ Dirichlet(α·1)."""
    if not cfg.partition.alpha > 0:
        raise ConfigError(f"`data.partition.alpha` must be > 0. Found {cfg.partition.alpha!r}.")
    shards: list[list[int]] = [[] for _ in range(k)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        props = rng.dirichlet(np.full(k, cfg.partition.alpha))
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
        for client, part in enumerate(np.split(idx, cuts)):
            shards[client].extend(part.tolist())
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


def _pathological(labels, groups, k, cfg, rng) -> list[np.ndarray]:
    """McMahan et al. 2017: each client holds examples of ``labels_per_client`` classes. Each
    class is cut into as many pieces as clients that hold it."""
    classes = np.unique(labels)
    per = cfg.partition.labels_per_client
    if not 1 <= per <= len(classes):
        raise ConfigError(
            f"`data.partition.labels_per_client` must be in 1..{len(classes)}. Found {per}."
        )
    # client i holds classes (i*per + j) mod C: every class is used when k*per >= C
    owners: dict[int, list[int]] = {int(c): [] for c in classes}
    for i in range(k):
        for j in range(per):
            owners[int(classes[(i * per + j) % len(classes)])].append(i)
    shards: list[list[int]] = [[] for _ in range(k)]
    for c, clients in owners.items():
        idx = rng.permutation(np.flatnonzero(labels == c))
        if clients:
            for client, part in zip(clients, np.array_split(idx, len(clients))):
                shards[client].extend(part.tolist())
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


def _by_column(labels, groups, k, cfg, rng) -> list[np.ndarray]:
    """Natural users: one client per distinct value of ``partition.column`` (the k largest)."""
    if groups is None:
        raise ConfigError("`data.partition.kind=by_column` needs `data.partition.column`.")
    values, counts = np.unique(groups, return_counts=True)
    if len(values) < k:
        raise ConfigError(
            f"column {cfg.partition.column!r} has {len(values)} distinct values, fewer than "
            f"`data.num_clients` = {k}. Lower num_clients to {len(values)}."
        )
    order = np.argsort(-counts, kind="stable")[:k]
    return [np.sort(np.flatnonzero(groups == values[i])) for i in order]


PARTITIONERS: dict[str, Partitioner] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
    "pathological": _pathological,
    "by_column": _by_column,
}


def partition(
    labels: np.ndarray, cfg: DataConfig, *, seed: int, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Indices of each client's shard (seeded)."""
    fn = PARTITIONERS.get(cfg.partition.kind)
    if fn is None:
        raise ConfigError(
            f"`data.partition.kind` must be one of {', '.join(sorted(PARTITIONERS))}. "
            f"Found {cfg.partition.kind!r}."
        )
    if cfg.num_clients < 1:
        raise ConfigError(f"`data.num_clients` must be >= 1. Found {cfg.num_clients}.")
    return fn(labels, groups, cfg.num_clients, cfg, np.random.default_rng(seed))


def label_histogram(labels: np.ndarray, shards: list[np.ndarray], num_labels: int) -> np.ndarray:
    """counts[client, class]."""
    return np.stack([np.bincount(labels[s], minlength=num_labels) for s in shards])
