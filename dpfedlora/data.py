"""Datasets as tensors: sources (built-in, local files, the Hugging Face hub), a seeded stratified
split, tokenisation for classification and causal LM."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError, DataConfig, ModelConfig

__all__ = ["TensorData", "load_data", "DATA_SOURCES", "stratified_split", "tokenize"]

BUILTIN_DIR = Path(__file__).resolve().parent / "data_files"


@dataclass
class TensorData:
    """Tokenised examples. ``labels``: class ids (classification) or token ids with -100 where no
    loss is taken (causal LM). ``groups``: a per-example key for natural-user partitions."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    groups: np.ndarray | None = None
    classes: np.ndarray | None = field(default=None)  # class id per example, for partitions

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, idx: np.ndarray | torch.Tensor | list[int]) -> TensorData:
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        idx_n = idx_t.numpy()
        return TensorData(
            self.input_ids[idx_t],
            self.attention_mask[idx_t],
            self.labels[idx_t],
            None if self.groups is None else self.groups[idx_n],
            None if self.classes is None else self.classes[idx_n],
        )

    def trimmed(self) -> TensorData:
        """Drop padding columns beyond the longest sequence of this batch (right padding)."""
        if len(self) == 0:
            return self
        length = int(self.attention_mask.sum(1).max())
        labels = self.labels[:, :length] if self.labels.dim() == 2 else self.labels
        return TensorData(self.input_ids[:, :length], self.attention_mask[:, :length], labels)

    def physical_batches(self, max_tokens: int) -> list[TensorData]:
        """Split into length-sorted chunks of at most ``max_tokens`` padded tokens (each chunk
        at least one example), each trimmed to its own longest sequence. 0: one chunk."""
        if max_tokens <= 0 or len(self) == 0:
            return [self.trimmed()]
        lengths = self.attention_mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        chunks, start = [], 0
        for end in range(1, len(self) + 1):
            # ascending lengths: a chunk's padded size is its count times its last length
            if end == len(self) or (end - start + 1) * int(lengths[order[end]]) > max_tokens:
                chunks.append(self.subset(order[start:end]).trimmed())
                start = end
        return chunks

    @property
    def class_labels(self) -> np.ndarray:
        if self.classes is not None:
            return self.classes
        if self.labels.dim() == 1:
            return self.labels.numpy()
        return np.zeros(len(self), dtype=np.int64)


# ------------------------------------------------------------------------------ raw sources
# A source returns (train_rows, eval_rows or None): dicts of column -> list.
Rows = dict[str, list[Any]]


def _sms_spam(cfg: DataConfig) -> tuple[Rows, Rows | None]:
    """SMS Spam Collection v.1 (Almeida & Gómez Hidalgo 2011), shipped with the package."""
    path = BUILTIN_DIR / "sms_spam" / "SMSSpamCollection.tsv"
    texts, labels = [], []
    with open(path, encoding="utf-8") as fh:
        next(fh)  # header "output<TAB>message"
        for line in fh:
            label, text = line.rstrip("\n").split("\t", 1)  # 54 texts start with a quote
            texts.append(text)
            labels.append(label)
    # The same messages as an instruction task for causal LMs: the loss is on the answer word.
    prompts = [f"SMS: {t}\nIs this message spam or ham? Answer:" for t in texts]
    responses = [f" {label}" for label in labels]
    return {"text": texts, "label": labels, "prompt": prompts, "response": responses}, None


def _from_datasets(cfg: DataConfig) -> tuple[Rows, Rows | None]:
    """Local files through datasets' packaged builders, or a hub id (needs a network)."""
    import datasets
    from datasets import load_dataset

    datasets.disable_progress_bars()  # its bars would interleave with the run's own lines
    datasets.utils.logging.set_verbosity(50)  # a bad file becomes our one-line ConfigError
    path = Path(cfg.name)
    builders = {
        ".csv": "csv",
        ".tsv": "csv",
        ".json": "json",
        ".jsonl": "json",
        ".parquet": "parquet",
    }
    if path.suffix in builders:
        if not path.is_file():
            raise ConfigError(f"`data.name` is a file path that does not exist: {cfg.name!r}.")
        if path.stat().st_size == 0:
            raise ConfigError(f"`data.name` is an empty file: {cfg.name!r}.")
        kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
        try:
            ds = load_dataset(builders[path.suffix], data_files=str(path), split="train", **kwargs)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for a bad file
            raise ConfigError(
                f"`data.name` = {cfg.name!r} cannot be read as {builders[path.suffix]} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                "Check its format and that it is UTF-8 text."
            ) from None
        return ds.to_dict(), None
    try:
        ds = load_dataset(cfg.name)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, bad files: all user-facing
        raise ConfigError(
            f"`data.name` = {cfg.name!r} is not a built-in, a local file or a loadable dataset "
            f"({type(exc).__name__}). Built-ins: builtin:sms_spam, builtin:synthetic; local "
            ".csv/.tsv/.json/.jsonl/.parquet files; hub ids need a network."
        ) from None
    for split in (cfg.train_split, cfg.eval_split):
        if split and split not in ds:
            raise ConfigError(
                f"`data.train_split`/`eval_split` = {split!r} is not a split of {cfg.name!r}. "
                f"Splits: {', '.join(ds)}."
            )
    train = ds[cfg.train_split].to_dict()
    held = ds[cfg.eval_split].to_dict() if cfg.eval_split else None
    return train, held


DATA_SOURCES: dict[str, Callable[[DataConfig], tuple[Rows, Rows | None]]] = {
    "builtin:sms_spam": _sms_spam,
}


# ------------------------------------------------------------------------------ helpers
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


def _class_ids(rows: Rows, cfg: DataConfig, num_labels: int) -> np.ndarray:
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


def _column(rows: Rows, name: str, key: str) -> list[Any]:
    if name not in rows:
        raise ConfigError(
            f"column {name!r} (data.{key}) not found. Columns: {', '.join(sorted(rows))}."
        )
    return rows[name]


def tokenize(rows: Rows, cfg: DataConfig, model: ModelConfig, tokenizer: Any) -> TensorData:
    """Classification: text -> ids, class label. Causal LM: prompt + response, with the loss on
    the response tokens only (labels -100 on prompt and padding)."""
    n = len(next(iter(rows.values()))) if rows else 0
    groups = (
        np.asarray(_column(rows, cfg.partition.column, "partition.column"))
        if (cfg.partition.kind == "by_column")
        else None
    )
    if model.task == "classification":
        texts = [str(t) for t in _column(rows, cfg.text_column, "text_column")]
        enc = tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=model.max_length,
            return_tensors="pt",
        )
        classes = _class_ids(rows, cfg, model.num_labels)
        return TensorData(
            enc["input_ids"], enc["attention_mask"], torch.from_numpy(classes), groups, classes
        )
    prompts = [str(t) for t in _column(rows, cfg.prompt_column, "prompt_column")]
    responses = [str(t) for t in _column(rows, cfg.response_column, "response_column")]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((n, model.max_length), pad, dtype=torch.long)
    mask = torch.zeros((n, model.max_length), dtype=torch.long)
    labels = torch.full((n, model.max_length), -100, dtype=torch.long)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        p_ids = tokenizer(p, add_special_tokens=True)["input_ids"]
        r_ids = tokenizer(r, add_special_tokens=False)["input_ids"] + eos
        seq = (p_ids + r_ids)[: model.max_length]
        L = len(seq)
        ids[i, :L] = torch.tensor(seq)
        mask[i, :L] = 1
        start = min(len(p_ids), L)
        labels[i, start:L] = ids[i, start:L]
    classes = _class_ids(rows, cfg, 10**9) if cfg.label_column in rows and cfg.label_names else None
    return TensorData(ids, mask, labels, groups, classes)


# ------------------------------------------------------------------------------ the loader
def _synthetic(cfg: DataConfig, model: ModelConfig, seed: int) -> TensorData:
    """A learnable toy task: the label is which of two marker-token sets the sequence contains.

    Tokens 10-19 mark class 1, 20-29 class 0, 30-127 are filler; length varies, rest is padding.
    """
    rng = np.random.default_rng(seed)
    n, length = cfg.num_examples or 1200, model.max_length
    ids = np.zeros((n, length), dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    labels = rng.integers(0, 2, size=n)
    for i in range(n):
        L = int(rng.integers(length // 2, length + 1))
        seq = rng.integers(30, 128, size=L)
        k = int(rng.integers(2, 5))
        pos = rng.choice(L, size=k, replace=False)
        seq[pos] = (10 if labels[i] == 1 else 20) + rng.integers(0, 10, size=k)
        ids[i, :L] = seq
        mask[i, :L] = 1
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    if model.task == "causal_lm":
        lm = t_ids.clone()
        lm[t_mask == 0] = -100
        return TensorData(t_ids, t_mask, lm, None, labels)
    return TensorData(t_ids, t_mask, torch.from_numpy(labels), None, labels)


def load_data(
    cfg: DataConfig, model: ModelConfig, *, seed: int, tokenizer: Any = None
) -> tuple[TensorData, TensorData]:
    """(train, eval) tensors for the configured dataset."""
    if cfg.name == "builtin:synthetic":
        data = _synthetic(cfg, model, seed)
        tr, ev = stratified_split(data.class_labels, cfg.eval_fraction, seed)
        return data.subset(tr), data.subset(ev)
    if cfg.name.startswith("builtin:") and cfg.name not in DATA_SOURCES:
        known = ", ".join(sorted([*DATA_SOURCES, "builtin:synthetic"]))
        raise ConfigError(f"unknown built-in dataset {cfg.name!r}. Built-ins: {known}.")
    source = DATA_SOURCES.get(cfg.name, _from_datasets)
    train_rows, eval_rows = source(cfg)
    if not train_rows or not len(next(iter(train_rows.values()))):
        raise ConfigError(f"`data.name` = {cfg.name!r} holds no examples.")
    needed = (
        [("text_column", cfg.text_column), ("label_column", cfg.label_column)]
        if model.task == "classification"
        else [("prompt_column", cfg.prompt_column), ("response_column", cfg.response_column)]
    )
    for key, column in needed:
        _column(train_rows, column, key)  # a missing column fails before any tokenising
    if tokenizer is None:
        raise ConfigError(
            f"`model.name` = {model.name!r} has no tokenizer, which dataset {cfg.name!r} needs. "
            "Use a pretrained model (e.g. builtin:minilm) or data.name=builtin:synthetic."
        )
    if (
        cfg.num_examples
        and cfg.name != "builtin:synthetic"
        and cfg.num_examples < len(next(iter(train_rows.values())))
    ):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.permutation(len(next(iter(train_rows.values()))))[: cfg.num_examples])
        train_rows = {k: [v[i] for i in keep] for k, v in train_rows.items()}
    data = tokenize(train_rows, cfg, model, tokenizer)
    if eval_rows is not None:
        return data, tokenize(eval_rows, cfg, model, tokenizer)
    tr, ev = stratified_split(data.class_labels, cfg.eval_fraction, seed)
    return data.subset(tr), data.subset(ev)
