"""One typed, frozen config tree loaded from YAML with dotted command-line overrides.

``Experiment(seed, model, data, method, privacy, train, server)``. YAML keys equal field names.
Unknown keys and wrong types are errors that name the key, the value and what is allowed.
Method-specific keys live under ``method`` and are validated by the method's own config class
(looked up in the method registry by ``method.name``).
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "PartitionConfig",
    "PrivacyConfig",
    "TrainConfig",
    "ServerConfig",
    "MethodConfig",
    "Experiment",
    "load_config",
    "from_dict",
    "to_dict",
    "parse_overrides",
]


class ConfigError(UserError, ValueError):
    """A config key or value is invalid."""


# Option strings of the schema. Each has a registry elsewhere (tasks: client.LOSSES; partition
# kinds: partition.PARTITIONERS; grad-sample modes: dp_optimizer.DP_OPTIMIZERS); a test checks
# that every registry's keys equal these, so the config can be validated without importing torch.
TASKS = ("classification", "causal_lm")
POOLINGS = ("model", "mean")
PARTITION_KINDS = ("iid", "dirichlet", "pathological", "by_column")
PRIVACY_MODES = ("none", "sample")
GRAD_SAMPLE_MODES = ("hooks", "ghost")
OPTIMIZERS = ("sgd", "adamw")
WEIGHTINGS = ("shard_size", "uniform")
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def check_choice(key: str, value: object, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"`{key}` must be one of {', '.join(allowed)}. Found {value!r}.")


def check_int(key: str, value: object, *, minimum: int, fix: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"`{key}` must be an integer >= {minimum}. Found {value!r}."
            + (f" {fix}" if fix else "")
        )


def check_number(
    key: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
    fix: str = "",
) -> None:
    """A finite number in [low, high] (open ends where asked); NaN is always refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok and math.isinf(value) and not allow_inf:
        ok = False
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        if math.isinf(high):
            what = f"{'>' if low_open else '>='} {low:g}"
            what = ("a number " if allow_inf else "a finite number ") + what
        else:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            what = f"a number in {lo}{low:g}, {high:g}{hi}"
        raise ConfigError(f"`{key}` must be {what}. Found {value!r}." + (f" {fix}" if fix else ""))


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class ModelConfig:
    # builtin:tiny-bert | builtin:tiny-llama | builtin:minilm | builtin:smollm2 | HF id or path
    name: str = "builtin:tiny-bert"
    task: str = "classification"  # classification | causal_lm
    target_modules: tuple[str, ...] = ()  # empty: detected from the architecture
    layers: tuple[int, ...] = ()  # adapt only these transformer layers (empty: all)
    train_head: bool = True  # classification head trained, sent and clipped with the adapters
    pooling: str = "model"  # model (the architecture's own head) | mean (masked mean + linear)
    num_labels: int = 2
    max_length: int = 32  # tokens per example (padding/truncation)
    device: str = "cpu"
    # cache the frozen embeddings and layers below the lowest adapted layer (see prefix_cache)
    cache_frozen_prefix: bool = True
    # dropout probability for every dropout in the model; None keeps the checkpoint's. DP
    # fine-tuning usually turns it off (Li et al. 2022): its noise adds to the DP noise.
    dropout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"`model.name` must be a model id or path. Found {self.name!r}.")
        check_choice("model.task", self.task, TASKS)
        check_choice("model.pooling", self.pooling, POOLINGS)
        check_int("model.num_labels", self.num_labels, minimum=2)
        check_int("model.max_length", self.max_length, minimum=2, fix="Use e.g. 128.")
        for i in self.layers:
            check_int("model.layers", i, minimum=0)
        if not DEVICE_PATTERN.match(str(self.device)):
            raise ConfigError(f"`model.device` must be cpu, cuda or cuda:N. Found {self.device!r}.")
        if self.dropout is not None:
            check_number(
                "model.dropout",
                self.dropout,
                low=0.0,
                high=1.0,
                high_open=True,
                fix="Or null to keep the model's.",
            )


@dataclass(frozen=True)
class PartitionConfig:
    kind: str = "iid"  # iid | dirichlet | pathological | by_column
    alpha: float = 1.0  # dirichlet: concentration on the label (smaller = more skewed)
    labels_per_client: int = 1  # pathological: k labels per client
    column: str = ""  # by_column: natural users (one client per distinct value, largest first)
    size_skew: float = 0.0  # iid: shard sizes ~ lognormal(0, size_skew); 0 = equal sizes

    def __post_init__(self) -> None:
        check_choice("data.partition.kind", self.kind, PARTITION_KINDS)
        check_number("data.partition.alpha", self.alpha, low=0.0, low_open=True)
        check_int("data.partition.labels_per_client", self.labels_per_client, minimum=1)
        check_number("data.partition.size_skew", self.size_skew, low=0.0, high=10.0)
        if self.kind == "by_column" and not self.column:
            raise ConfigError(
                "`data.partition.column` must name a column when `data.partition.kind` is "
                "by_column. Found ''."
            )


@dataclass(frozen=True)
class DataConfig:
    # builtin:synthetic | builtin:sms_spam | a local .csv/.tsv/.json/.jsonl/.parquet | a HF id
    name: str = "builtin:synthetic"
    text_column: str = "text"
    label_column: str = "label"
    label_names: tuple[str, ...] = ()  # string labels in class order, e.g. [ham, spam]
    prompt_column: str = "prompt"  # causal LM: the loss is on the response tokens only
    response_column: str = "response"
    train_split: str = "train"  # hub datasets
    eval_split: str = ""  # hub datasets with a held-out split; empty: split train
    num_examples: int = 0  # 0 = all (synthetic: 1200); else a seeded random subset of train
    eval_fraction: float = 0.2  # held-out share (stratified, seeded) when there is no split
    num_clients: int = 4
    partition: PartitionConfig = field(default_factory=PartitionConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"`data.name` must be a dataset id or path. Found {self.name!r}.")
        check_int("data.num_examples", self.num_examples, minimum=0, fix="0 means all.")
        check_number(
            "data.eval_fraction",
            self.eval_fraction,
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        )
        check_int("data.num_clients", self.num_clients, minimum=1)


@dataclass(frozen=True)
class MethodConfig:
    """Keys shared by every method; each method subclasses this with its own keys."""

    name: str = "ffa"
    rank: int = 4
    alpha: float = 8.0  # LoRA scale s = alpha / rank (alpha / sqrt(rank) with rslora)
    rslora: bool = False
    weighting: str = "shard_size"  # shard_size | uniform: aggregation weights p_k

    def __post_init__(self) -> None:
        check_int("method.rank", self.rank, minimum=1)
        check_number("method.alpha", self.alpha, low=0.0, low_open=True)
        check_choice("method.weighting", self.weighting, WEIGHTINGS)


@dataclass(frozen=True)
class PrivacyConfig:
    mode: str = "sample"  # none | sample (record-level DP-SGD on each client)
    target_epsilon: float | None = 8.0  # calibrate σ to this (per client, whole run); or give σ
    noise_multiplier: float | None = None  # σ = noise std / clip norm; overrides calibration
    delta: float = 1e-5
    clip_norm: float = 1.0  # per-sample L2 clip C on exactly the trainable (sent) tensors
    accountant: str = "prv"  # prv | pld | rdp
    grad_sample_mode: str = "hooks"  # hooks | ghost
    # true: noise and Poisson sampling from a CSPRNG keyed from OS entropy (deployments);
    # false: seeded from `seed`, reproducible by anyone holding the config (simulation only)
    secure_mode: bool = False
    # operator diagnostics outside the DP guarantee: label histogram and training loss
    diagnostics: bool = True

    def __post_init__(self) -> None:
        from accounting import available_backends

        check_choice("privacy.mode", self.mode, PRIVACY_MODES)
        check_choice("privacy.grad_sample_mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)
        check_choice("privacy.accountant", self.accountant, available_backends())
        check_number(
            "privacy.delta",
            self.delta,
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
            fix="Use a value below 1/n, e.g. 1e-5.",
        )
        check_number("privacy.clip_norm", self.clip_norm, low=0.0, low_open=True)
        if self.noise_multiplier is not None:
            check_number(
                "privacy.noise_multiplier",
                self.noise_multiplier,
                low=0.0,
                low_open=True,
                fix="Use privacy.mode=none for non-private training.",
            )
        if self.target_epsilon is not None:
            check_number(
                "privacy.target_epsilon",
                self.target_epsilon,
                low=0.0,
                low_open=True,
                allow_inf=True,
                fix="inf means non-private.",
            )
            if math.isinf(self.target_epsilon) and self.noise_multiplier is None:
                # ε = ∞ is a non-private run, as in sweeps: no noise, no ledger
                object.__setattr__(self, "mode", "none")
        if self.mode == "sample" and self.noise_multiplier is None and self.target_epsilon is None:
            raise ConfigError(
                "`privacy.target_epsilon` must be set when `privacy.mode` is sample (or give "
                "`privacy.noise_multiplier`). Found neither."
            )

    @property
    def private(self) -> bool:
        return self.mode != "none"

    @property
    def budget(self) -> float:
        """ε each client may spend; infinite when only σ is given (tracked, not capped)."""
        return math.inf if self.target_epsilon is None else float(self.target_epsilon)


@dataclass(frozen=True)
class TrainConfig:
    local_steps: int = 4  # DP-SGD steps per client per round (used when local_epochs is 0)
    local_epochs: float = 0.0  # if > 0: steps = ceil(local_epochs / q)
    batch_size: int = 32  # expected (Poisson) batch size; q = batch_size / shard size
    # if > 0: the same Poisson rate q for every client (expected batch q * shard size), so
    # clients of different sizes spend ε alike and the smallest does not dictate σ
    sampling_rate: float = 0.0
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | adamw
    weight_decay: float = 0.0
    # Physical batching (like Opacus's BatchMemoryManager): a Poisson batch is sorted by length
    # and run through forward/backward in chunks of at most this many (padded) tokens before the
    # one DP step. Per-sample clipping makes this exact; it cuts padding and peak memory.
    # 0 = the whole batch at once.
    physical_batch_tokens: int = 0

    def __post_init__(self) -> None:
        check_int("train.local_steps", self.local_steps, minimum=1)
        check_number("train.local_epochs", self.local_epochs, low=0.0, high=1e6)
        check_int("train.batch_size", self.batch_size, minimum=1)
        check_number(
            "train.sampling_rate",
            self.sampling_rate,
            low=0.0,
            high=1.0,
            fix="It is a probability q in (0, 1]; 0 derives q from train.batch_size.",
        )
        check_number("train.lr", self.lr, low=0.0, low_open=True, fix="Use e.g. 0.01.")
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        check_number("train.weight_decay", self.weight_decay, low=0.0)
        check_int(
            "train.physical_batch_tokens",
            self.physical_batch_tokens,
            minimum=0,
            fix="0 means the whole batch.",
        )


@dataclass(frozen=True)
class ServerConfig:
    rounds: int = 2
    clients_per_round: int = 0  # 0 = all clients every round

    def __post_init__(self) -> None:
        check_int("server.rounds", self.rounds, minimum=1)
        check_int("server.clients_per_round", self.clients_per_round, minimum=0, fix="0 means all.")


@dataclass(frozen=True)
class Experiment:
    seed: int = 0
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        check_int("seed", self.seed, minimum=0)
        if not isinstance(self.name, str) or not re.match(r"^[A-Za-z0-9_.-]+$", self.name):
            raise ConfigError(
                "`name` must be letters, digits, '.', '_' or '-' (it names the run directory). "
                f"Found {self.name!r}."
            )


# ----------------------------------------------------------------------------- conversion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"`{key}` must be {' or '.join(map(_type_name, args))}. Found {value!r}.")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{key}` must be a list. Found {value!r}.")
        return tuple(_coerce(v, args[0], key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}` must be a mapping. Found {value!r}.")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"`{key}` must be true or false. Found {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"`{key}` must be an integer. Found {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-5" (no dot) as a string; "inf" means infinity (non-private).
            try:
                return float(value.strip().lower().replace(".inf", "inf"))
            except ValueError:
                pass
        raise ConfigError(f"`{key}` must be a number. Found {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"`{key}` must be a string. Found {value!r}.")
    if is_dataclass(tp):
        return from_dict(tp, value, prefix=key)
    raise ConfigError(f"`{key}`: unsupported config type {tp!r}.")  # pragma: no cover


def from_dict(cls: type, data: Any, *, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"`{prefix or 'config'}` must be a mapping. Found {data!r}.")
    if cls is MethodConfig or (isinstance(cls, type) and issubclass(cls, MethodConfig)):
        from .methods import method_config_class

        cls = method_config_class(str(data.get("name", MethodConfig.name)))
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key `{where}{unknown[0]}`. Allowed under "
            f"`{prefix or 'top level'}`: {', '.join(sorted(names))}."
        )
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            key = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"`{prefix or 'config'}`: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (inverse of from_dict), for YAML and hashing."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj) if f.init}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    return obj


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["method.name=ffa", "server.rounds=3"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override must look like key=value. Found {pair!r}.")
        key, raw = pair.split("=", 1)
        if not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override must look like key=value. Found {pair!r}.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(
                f"override {pair!r}: the value is not valid YAML. Quote it, e.g. {key}='...'."
            ) from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override.")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Experiment:
    """Load an Experiment from YAML (or defaults) and apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = yaml.safe_load(text) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}.") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file.") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}.") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping. Found {type(data).__name__}."
            )
    if overrides:
        over = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        if "method" in over and "name" in over["method"] and "method" in data:
            # switching method keeps only the shared keys of the old method section
            shared = {f.name for f in fields(MethodConfig)}
            data = dict(data, method={k: v for k, v in data["method"].items() if k in shared})
        data = _merge(data, over)
    return from_dict(Experiment, data)


def with_updates(cfg: Experiment, **sections: Any) -> Experiment:
    """``with_updates(cfg, server={"rounds": 4})``: a modified copy, validated."""
    data = to_dict(cfg)
    return from_dict(Experiment, _merge(data, sections))
