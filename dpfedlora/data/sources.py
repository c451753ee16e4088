"""Where examples come from: built-ins shipped with the package, local files, the hub.

Which one is decided by the name alone (:mod:`dpfedlora.config.data_names`): only a ``hub:``
name is ever sent to a hub; a local path, whatever its extension, is read from disk or refused.

A source returns ``(train_rows, eval_rows or None)``; the synthetic task is generated as token
ids directly (it has no text).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import ConfigError, DataConfig, ModelConfig
from ..config.data_names import FILE_BUILDERS, HUB_PREFIX, data_name_kind, file_extensions
from .rows import Rows

__all__ = [
    "DATA_SOURCES",
    "BUILTIN_DIR",
    "check_local_file",
    "local_file",
    "read_source",
    "synthetic_tokens",
]

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data_files"


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


def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()  # its bars would interleave with the run's own lines
    datasets.utils.logging.set_verbosity(50)  # a bad file becomes our one-line ConfigError
    return datasets.load_dataset


def local_file(cfg: DataConfig) -> Path:
    """The readable, non-empty local file ``data.name`` names (checked before any model is
    built: :func:`dpfedlora.federation.setup.build_setup`). Never contacts a hub."""
    path = Path(cfg.name).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"`data.name` is a file path that does not exist: {cfg.name!r}. Give an existing "
            f"{file_extensions()} file, or hub:<id> for a hub dataset."
        )
    if path.stat().st_size == 0:
        raise ConfigError(f"`data.name` is an empty file: {cfg.name!r}.")
    return path


def check_local_file(cfg: DataConfig) -> None:
    """Fail at once, before a model is built, when ``data.name`` is a missing or empty file."""
    if data_name_kind("data.name", cfg.name) == "file":
        local_file(cfg)


def _from_file(cfg: DataConfig) -> tuple[Rows, Rows | None]:
    """A local file through datasets' packaged builders (no network)."""
    path = local_file(cfg)
    builder = FILE_BUILDERS[path.suffix.lower()]
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    load_dataset = _quiet_datasets()
    try:
        ds = load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a bad file
        raise ConfigError(
            f"`data.name` = {cfg.name!r} cannot be read as {builder} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Check its format and that it is UTF-8 text."
        ) from None
    return ds.to_dict(), None


def _from_hub(cfg: DataConfig) -> tuple[Rows, Rows | None]:
    """A hub dataset named ``hub:<id>`` (needs a network); only this source contacts a hub."""
    hub_id = cfg.name[len(HUB_PREFIX) :].strip()
    load_dataset = _quiet_datasets()
    try:
        ds = load_dataset(hub_id)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, bad files: all user-facing
        raise ConfigError(
            f"`data.name` = {cfg.name!r}: hub dataset {hub_id!r} cannot be loaded "
            f"({type(exc).__name__}). Check the id and the network, or use a local "
            f"{file_extensions()} file."
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
# data.name's kind (config.data_names) -> the reader of everything that is not a named built-in
_READERS: dict[str, Callable[[DataConfig], tuple[Rows, Rows | None]]] = {
    "file": _from_file,
    "hub": _from_hub,
}


def read_source(cfg: DataConfig) -> tuple[Rows, Rows | None]:
    """The rows of a configured text dataset (a built-in, a local file or a ``hub:`` id)."""
    if cfg.name in DATA_SOURCES:
        return DATA_SOURCES[cfg.name](cfg)
    kind = data_name_kind("data.name", cfg.name)  # the config validated it: never raises here
    if kind == "builtin":
        known = ", ".join(sorted([*DATA_SOURCES, "builtin:synthetic"]))
        raise ConfigError(f"unknown built-in dataset {cfg.name!r}. Built-ins: {known}.")
    return _READERS[kind](cfg)


def synthetic_tokens(
    cfg: DataConfig, model: ModelConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A learnable toy task as (ids, mask, class labels): the label is which of two marker-token
    sets the sequence contains. Tokens 10-19 mark class 1, 20-29 class 0, 30-127 are filler;
    length varies, the rest is padding."""
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
    return ids, mask, labels
