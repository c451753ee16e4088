"""Datasets as tensors, the synthetic task, and partitioning across clients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .config import ConfigError, DataConfig, ModelConfig

__all__ = ["TensorData", "load_data", "partition", "DATASETS", "PARTITIONERS"]


@dataclass
class TensorData:
    """Tokenised examples. ``labels`` is the class (classification) or token ids (causal LM,
    -100 where no loss is taken)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, idx: np.ndarray | torch.Tensor) -> TensorData:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TensorData(self.input_ids[idx], self.attention_mask[idx], self.labels[idx])

    @property
    def class_labels(self) -> np.ndarray:
        return self.labels.numpy() if self.labels.dim() == 1 else np.zeros(len(self), dtype=int)


def _synthetic(cfg: DataConfig, model: ModelConfig, seed: int) -> tuple[TensorData, TensorData]:
    """A learnable toy task: the label is which of two marker-token sets dominates the sequence.

    Tokens 10-19 mark class 1, 20-29 class 0, 30-127 are filler; length varies, rest is padding.
    """
    rng = np.random.default_rng(seed)
    n, length = cfg.num_examples, model.max_length
    ids = np.zeros((n, length), dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    labels = rng.integers(0, 2, size=n)
    for i in range(n):
        L = int(rng.integers(length // 2, length + 1))
        seq = rng.integers(30, 128, size=L)
        k = int(rng.integers(2, 5))
        pos = rng.choice(L, size=k, replace=False)
        base = 10 if labels[i] == 1 else 20
        seq[pos] = base + rng.integers(0, 10, size=k)
        ids[i, :L] = seq
        mask[i, :L] = 1
    data = TensorData(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels))
    if model.task == "causal_lm":
        lm = data.input_ids.clone()
        lm[data.attention_mask == 0] = -100
        data = TensorData(data.input_ids, data.attention_mask, lm)
    n_eval = int(round(cfg.eval_fraction * n))
    perm = rng.permutation(n)
    return data.subset(perm[n_eval:]), data.subset(perm[:n_eval])


DATASETS: dict[str, Callable[[DataConfig, ModelConfig, int], tuple[TensorData, TensorData]]] = {
    "builtin:synthetic": _synthetic,
}


def load_data(cfg: DataConfig, model: ModelConfig, *, seed: int) -> tuple[TensorData, TensorData]:
    """(train, eval) tensors for the configured dataset."""
    loader = DATASETS.get(cfg.name)
    if loader is None:
        raise ConfigError(
            f"unknown dataset {cfg.name!r}. Available: {', '.join(sorted(DATASETS))}."
        )
    return loader(cfg, model, seed)


def _iid(labels: np.ndarray, k: int, cfg: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(s) for s in np.array_split(rng.permutation(len(labels)), k)]


def _dirichlet(
    labels: np.ndarray, k: int, cfg: DataConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, split its examples across clients with proportions ~ Dirichlet(α)."""
    shards: list[list[int]] = [[] for _ in range(k)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        props = rng.dirichlet(np.full(k, cfg.partition.alpha))
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
        for client, part in enumerate(np.split(idx, cuts)):
            shards[client].extend(part.tolist())
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


PARTITIONERS: dict[
    str, Callable[[np.ndarray, int, DataConfig, np.random.Generator], list[np.ndarray]]
] = {"iid": _iid, "dirichlet": _dirichlet}


def partition(labels: np.ndarray, cfg: DataConfig, *, seed: int) -> list[np.ndarray]:
    """Indices of each client's shard (seeded)."""
    fn = PARTITIONERS.get(cfg.partition.kind)
    if fn is None:
        raise ConfigError(
            f"`data.partition.kind` must be one of {', '.join(sorted(PARTITIONERS))}. "
            f"Found {cfg.partition.kind!r}."
        )
    if cfg.num_clients < 1:
        raise ConfigError(f"`data.num_clients` must be >= 1. Found {cfg.num_clients}.")
    return fn(labels, cfg.num_clients, cfg, np.random.default_rng(seed))
