"""The config schema: one typed, frozen tree, validated completely on construction.

``Experiment(seed, model, data, method, privacy, train, server, logging)``. YAML keys equal
field names.
Every option string and numeric range is checked in ``__post_init__``, so a config that exists
is valid; loading, overrides and ``base:`` inheritance are in :mod:`dpfedlora.config.load`.
Method-specific sections subclass :class:`MethodConfig` (:mod:`dpfedlora.config.methods`).
This module imports neither torch nor the methods.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import UserError
from .data_names import data_name_kind

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "PartitionConfig",
    "PrivacyConfig",
    "TrainConfig",
    "ServerConfig",
    "LoggingConfig",
    "MethodConfig",
    "Experiment",
    "check_choice",
    "check_int",
    "check_number",
]


class ConfigError(UserError, ValueError):
    """A config key or value is invalid."""


# Option strings of the schema. Each has a registry elsewhere (tasks: tasks.TASKS; partition
# kinds: data.partition.PARTITIONERS; grad-sample modes: client.grad_sample.GRAD_SAMPLE_MODES);
# a test checks that every registry's keys equal these, so a config is validated without torch.
TASK_NAMES = ("classification", "causal_lm")
POOLINGS = ("model", "mean")
PARTITION_KINDS = ("iid", "dirichlet", "pathological", "by_column")
PRIVACY_MODES = ("none", "sample")
GRAD_SAMPLE_MODES = ("hooks", "ghost")  # plus "auto": chosen by the memory plan
DTYPES = ("float32", "bfloat16", "float16")  # the frozen base's; adapters stay float32
QUANTIZATIONS = ("none", "4bit", "8bit")  # bitsandbytes (optional extra)
PROMPT_FORMATS = ("auto", "plain", "chat")  # prompts.PROMPT_FORMATS plus auto
LABEL_CALIBRATIONS = ("none", "content_free")  # calibration.CALIBRATIONS
DATA_POOLS = ("private", "public")
CAUSAL_LM_LOSSES = ("response", "label_words")  # tasks.CAUSAL_LM_LOSSES
OPTIMIZERS = ("sgd", "adamw")
WEIGHTINGS = ("shard_size", "uniform")
# experiment trackers: each a switch of LoggingConfig and a federation.callbacks.CALLBACKS name
LOGGERS = ("tensorboard", "wandb", "mlflow")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


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
    # causal LM answering in label words: train a correction of the LM head's rows for the
    # label words' first tokens (len(label_names) x (hidden + 1) numbers; models.label_head)
    label_head: bool = False
    pooling: str = "model"  # model (the architecture's own head) | mean (masked mean + linear)
    num_labels: int = 2
    max_length: int = 32  # tokens per example (padding/truncation)
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    # the frozen base's dtype; adapters, heads, per-sample gradients, clipping and noise stay
    # float32 (peft keeps LoRA factors in float32; no autocast, see models.precision)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    quantization: str = "none"  # none | 4bit | 8bit: a bitsandbytes base (QLoRA)
    # causal LM: auto (the tokenizer's chat template when it has one) | plain | chat
    prompt_format: str = "auto"
    # cache the frozen embeddings and layers below the lowest adapted layer (see prefix_cache)
    cache_frozen_prefix: bool = True
    # dropout probability for every dropout in the model; None keeps the checkpoint's. DP
    # fine-tuning usually turns it off (Li et al. 2022): its noise adds to the DP noise.
    dropout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"`model.name` must be a model id or path. Found {self.name!r}.")
        check_choice("model.task", self.task, TASK_NAMES)
        check_choice("model.pooling", self.pooling, POOLINGS)
        check_int("model.num_labels", self.num_labels, minimum=2)
        check_int("model.max_length", self.max_length, minimum=2, fix="Use e.g. 128.")
        for i in self.layers:
            check_int("model.layers", i, minimum=0)
        if not DEVICE_PATTERN.match(str(self.device)):
            raise ConfigError(
                f"`model.device` must be auto, cpu, cuda or cuda:N. Found {self.device!r}."
            )
        check_choice("model.dtype", self.dtype, DTYPES)
        check_choice("model.quantization", self.quantization, QUANTIZATIONS)
        check_choice("model.prompt_format", self.prompt_format, PROMPT_FORMATS)
        for key in ("train_head", "label_head", "cache_frozen_prefix"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(
                    f"`model.{key}` must be true or false. Found {getattr(self, key)!r}."
                )
        if self.quantization != "none" and self.dtype == "float32":
            raise ConfigError(
                f"`model.quantization` = {self.quantization} computes in a low precision: "
                "`model.dtype` must be bfloat16 or float16. Found float32."
            )
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
    # builtin:synthetic | builtin:sms_spam | a local .csv/.tsv/.json/.jsonl/.parquet file |
    # hub:<id> for a Hugging Face hub dataset (network). Only the hub: prefix ever reaches the
    # hub: a name that looks like a path (a / or \, a leading . or ~, an extension) is read from
    # disk only, and a bare name is an error (data_names.py)
    name: str = "builtin:synthetic"
    text_column: str = "text"
    label_column: str = "label"
    label_names: tuple[str, ...] = ()  # string labels in class order, e.g. [ham, spam]
    # causal LM label words: none (raw argmax) | content_free (divide out the prior the model
    # gives the label words on content-free prompts; reads no data, no privacy cost)
    label_calibration: str = "none"
    prompt_column: str = "prompt"  # causal LM: the loss is on the response tokens only
    # causal LM: a prompt built from text_column, e.g. "Is this spam or ham?\n\n{text}"; long
    # examples then lose the end of the text, never the instruction or the answer
    prompt_template: str = ""
    response_column: str = "response"
    train_split: str = "train"  # hub: datasets
    eval_split: str = ""  # hub: datasets with a held-out split; empty: split train
    num_examples: int = 0  # 0 = all (synthetic: 1200); else a seeded random subset of train
    eval_fraction: float = 0.2  # held-out share (stratified, seeded) when there is no split
    num_clients: int = 4
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    # the split (held-out, public share, subsample) and the partition over clients; None: `seed`.
    # Separate from `seed` (noise, sampling, initialisation) so that a sweep can vary training
    # randomness on a fixed split, or the split alone.
    seed: int | None = None
    # a share of the training pool marked public: taken out before partitioning, so it is in no
    # client's shard and using it costs no privacy (hyperparameter tuning, `dpfedlora tune`)
    public_fraction: float = 0.0
    # the data seed whose public share this split uses (None: its own). A table that varies
    # the split keeps the records a tuning read public in every cell: they leave this split's
    # pool and held-out set wherever they fall (with any record of identical tokens)
    public_seed: int | None = None
    # what the clients train on: private (their shards of the pool without the public share) |
    # public (proxy clients: the public share split like the pool, eval_fraction of it held out
    # for validation in place of the held-out set, which such a run never reads)
    pool: str = "private"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(
                f"`data.name` must be builtin:<name>, a file path or hub:<id>. Found {self.name!r}."
            )
        try:
            data_name_kind("data.name", self.name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.seed is not None:
            check_int("data.seed", self.seed, minimum=0, fix="Or null to follow `seed`.")
        if self.public_seed is not None:
            check_int(
                "data.public_seed", self.public_seed, minimum=0, fix="Or null: the split's own."
            )
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
        check_choice("data.label_calibration", self.label_calibration, LABEL_CALIBRATIONS)
        check_number(
            "data.public_fraction", self.public_fraction, low=0.0, high=1.0, high_open=True
        )
        check_choice("data.pool", self.pool, DATA_POOLS)
        if self.prompt_template and self.prompt_template.count("{text}") != 1:
            raise ConfigError(
                "`data.prompt_template` must contain {text} exactly once (where the text goes). "
                f"Found {self.prompt_template!r}."
            )


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
    # or calibrate σ to attack risk (accounting.risk): the largest TPR any membership-inference
    # attack may reach at FPR target_fpr over the whole run. Both or neither; target_epsilon is
    # then left unset, and the ε that σ gives at δ over the planned run is the budget enforced
    target_tpr: float | None = None
    target_fpr: float | None = None
    delta: float = 1e-5  # below 0.1 always; below 1/n for the smallest shard (else an error)
    # research on δ itself only: δ >= 1/n for the smallest shard becomes a loud warning instead
    # of an error (a mechanism that publishes one record outright meets such a δ)
    allow_large_delta: bool = False
    clip_norm: float = 1.0  # per-sample L2 clip C on exactly the trainable (sent) tensors
    accountant: str = "fastpld"  # fastpld | prv | pld | rdp
    # hooks | ghost | auto (hooks unless their per-sample gradients do not fit; `dpfedlora
    # plan` and the run's start say which)
    grad_sample_mode: str = "auto"
    # true: noise and Poisson sampling from a CSPRNG keyed from OS entropy (deployments);
    # false: seeded from `seed`, reproducible by anyone holding the config (simulation only)
    secure_mode: bool = False
    # operator diagnostics outside the DP guarantee: label histogram and training loss
    diagnostics: bool = True

    def __post_init__(self) -> None:
        from accounting import MAX_DELTA, available_backends
        from accounting.accountant import large_delta_problem

        check_choice("privacy.mode", self.mode, PRIVACY_MODES)
        check_choice(
            "privacy.grad_sample_mode", self.grad_sample_mode, (*GRAD_SAMPLE_MODES, "auto")
        )
        check_choice("privacy.accountant", self.accountant, available_backends())
        number = isinstance(self.delta, (int, float)) and not isinstance(self.delta, bool)
        if number and self.delta >= MAX_DELTA:  # the opt-out below never lifts this cap
            raise ConfigError("`privacy.delta` " + large_delta_problem(self.delta))
        check_number(
            "privacy.delta",
            self.delta,
            low=0.0,
            high=MAX_DELTA,
            low_open=True,
            high_open=True,
            fix="Use a value below 1/n, e.g. 1e-5.",
        )
        if not isinstance(self.allow_large_delta, bool):
            found = self.allow_large_delta
            raise ConfigError(
                f"`privacy.allow_large_delta` must be true or false. Found {found!r}."
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
        self._check_risk_target()
        if (self.mode == "sample" and self.noise_multiplier is None
                and self.target_epsilon is None and self.target_tpr is None):  # fmt: skip
            raise ConfigError(
                "`privacy.target_epsilon` must be set when `privacy.mode` is sample (or give "
                "`privacy.noise_multiplier`, or `privacy.target_tpr`). Found neither."
            )

    def _check_risk_target(self) -> None:
        """Both or neither of target_tpr and target_fpr; 0 < fpr < tpr < 1; no ε target too."""
        tpr, fpr = self.target_tpr, self.target_fpr
        if tpr is None and fpr is None:
            return
        if tpr is None or fpr is None:
            raise ConfigError(
                "`privacy.target_tpr` and `privacy.target_fpr` go together (the TPR bound and "
                f"the FPR it holds at). Found target_tpr={tpr!r}, target_fpr={fpr!r}."
            )
        for key, v in (("privacy.target_fpr", fpr), ("privacy.target_tpr", tpr)):
            check_number(key, v, low=0.0, high=1.0, low_open=True, high_open=True, fix="E.g. 0.01.")
        if not fpr < tpr:
            raise ConfigError(
                f"`privacy.target_tpr` must be above `privacy.target_fpr` ({fpr:g}): guessing at "
                f"random already has TPR = FPR. Found {tpr!r}."
            )
        if self.target_epsilon is not None:
            raise ConfigError(
                "`privacy.target_epsilon` must be unset (null) with `privacy.target_tpr`: the "
                f"risk target decides σ and the ε budget. Found {self.target_epsilon!r}. "
                "Remove one of the two."
            )

    @property
    def private(self) -> bool:
        return self.mode != "none"

    @property
    def budget(self) -> float:
        """ε each client may spend; infinite when only σ is given (tracked, not capped). For a
        risk target, the ε at δ of the planned run at the σ calibrated to it, which depends on
        the clients' rates and steps: the run's set-up records it (:meth:`resolve_budget`)."""
        if self.target_tpr is not None:
            resolved = self.__dict__.get("_resolved_budget")
            if resolved is None:
                raise ConfigError(
                    "`privacy.target_tpr`: its ε budget depends on the clients' sampling rates "
                    "and steps, not known here. Give `privacy.target_epsilon` instead (`dpfedlora "
                    "calibrate --target-tpr T --at-fpr A` prints the ε that risk stands for)."
                )
            return resolved
        return math.inf if self.target_epsilon is None else float(self.target_epsilon)

    def resolve_budget(self, epsilon: float) -> None:
        """Record the ε budget a risk target stands for, once the plan is known
        (:func:`dpfedlora.federation.planning.resolve_risk_budget`). Not a field: it is
        derived, so it is neither hashed nor written to config.yaml."""
        object.__setattr__(self, "_resolved_budget", float(epsilon))


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
    # 0 = the whole batch at once; auto = sized from free device memory (models.memory).
    physical_batch_tokens: int | str = 0
    # recompute activations in the backward pass (reentrant: the only kind Opacus's hooks see
    # whole; non-reentrant leaves most per-sample gradients unset)
    gradient_checkpointing: bool = False

    # causal LM: response (cross-entropy over the vocabulary on every response token) |
    # label_words (cross-entropy over the label words' first tokens where the answer starts:
    # every per-example gradient is about the decision, none about the answer's format)
    causal_lm_loss: str = "response"

    def __post_init__(self) -> None:
        check_choice("train.causal_lm_loss", self.causal_lm_loss, CAUSAL_LM_LOSSES)
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
        if self.physical_batch_tokens != "auto":
            check_int(
                "train.physical_batch_tokens",
                self.physical_batch_tokens,
                minimum=0,
                fix="0 means the whole batch; auto sizes it from free device memory.",
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(
                "`train.gradient_checkpointing` must be true or false. "
                f"Found {self.gradient_checkpointing!r}."
            )


@dataclass(frozen=True)
class ServerConfig:
    rounds: int = 2
    clients_per_round: int = 0  # 0 = all clients every round

    def __post_init__(self) -> None:
        check_int("server.rounds", self.rounds, minimum=1)
        check_int("server.clients_per_round", self.clients_per_round, minimum=0, fix="0 means all.")


@dataclass(frozen=True)
class LoggingConfig:
    """Trackers a run writes to besides metrics.jsonl. Each is an optional extra; whether it is
    installed is checked when a run starts, not here, so the config stays valid where it is
    only read (accounting verbs, plans). Not part of the config hash: turning a tracker on or
    off changes no result, so a run resumes with it changed."""

    tensorboard: bool = False  # <run dir>/tensorboard (pip install 'dpfedlora[tensorboard]')
    wandb: bool = False  # Weights & Biases; WANDB_MODE=offline keeps it local
    mlflow: bool = False  # <run dir>/mlruns, or MLFLOW_TRACKING_URI

    def __post_init__(self) -> None:
        for key in LOGGERS:
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(
                    f"`logging.{key}` must be true or false. Found {getattr(self, key)!r}."
                )

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(key for key in LOGGERS if getattr(self, key))


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
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def data_seed(self) -> int:
        """The seed of the data split and partition: ``data.seed``, else ``seed``."""
        return self.seed if self.data.seed is None else self.data.seed

    @property
    def public_seed(self) -> int:
        """The data seed that draws the public share: ``data.public_seed``, else the split's."""
        return self.data_seed if self.data.public_seed is None else self.data.public_seed

    def __post_init__(self) -> None:
        check_int("seed", self.seed, minimum=0)
        if not isinstance(self.name, str) or not re.match(r"^[A-Za-z0-9_.-]+$", self.name):
            raise ConfigError(
                "`name` must be letters, digits, '.', '_' or '-' (it names the run directory). "
                f"Found {self.name!r}."
            )
        init = getattr(self.method, "init", "random")
        method_share = (
            getattr(self.method, "init_public_fraction", 0.0) if init == "public" else 0.0
        )
        share = self.data.public_fraction
        if share > 0 and method_share > 0 and share != method_share:
            raise ConfigError(
                f"`data.public_fraction` = {share:g} and `method.init_public_fraction` = "
                f"{method_share:g} would mark two different public shares. Set them equal."
            )
        if self.data.public_seed is not None and share <= 0 and method_share <= 0:
            raise ConfigError(
                f"`data.public_seed` = {self.data.public_seed} names the split whose public "
                f"share to use, but `data.public_fraction` = {share:g} marks none. Set "
                "data.public_fraction, or data.public_seed=null."
            )
        if self.data.pool == "public" and share <= 0 and method_share <= 0:
            raise ConfigError(
                "`data.pool` = public trains proxy clients on the public share, but "
                f"`data.public_fraction` = {share:g}. Set data.public_fraction (e.g. 0.25)."
            )
        if self.train.causal_lm_loss == "label_words" and not self.data.label_names:
            # (whether the task answers in words is the task registry's to say: the trainer)
            raise ConfigError(
                "`train.causal_lm_loss` = label_words needs data.label_names (the answer words). "
                "Found none. Set data.label_names, or use train.causal_lm_loss=response."
            )
        if self.model.label_head and not (self.data.label_names and self.model.train_head):
            raise ConfigError(
                "`model.label_head` = true trains the LM head's rows for the label words, which "
                f"needs data.label_names (found {list(self.data.label_names)}) and "
                f"model.train_head=true (found {self.model.train_head}). Set both, or "
                "model.label_head=false."
            )
        if init == "private" and self.model.dtype != "float32" and self.privacy.private:
            # the gradient initialisation clips per-sample gradients of the *base* weights,
            # which a low-precision base holds in bfloat16/float16: their norms are not exact
            raise ConfigError(
                f"`method.init` = {init} clips per-sample gradients of the base weights, which "
                f"`model.dtype` = {self.model.dtype} keeps in low precision (inexact clipping). "
                "Use method.init=random, or model.dtype=float32."
            )
