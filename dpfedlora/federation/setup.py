"""Everything a run (or an audit, or an export) builds before round 1, from the config alone.

The method and the shared model with its adapters; the data, split into the held-out set, an
optional public share (the method's choice, removed from the private pool) and one shard per
client; the frozen-prefix cache; the trainer; the clients with their Poisson rate and local
steps. Seeded, so every process that builds it from the same config gets the same objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from ..client import Client, Trainer
from ..config import ConfigError, Experiment
from ..data.load import load_data, load_records
from ..data.partition import label_histogram, partition
from ..data.sources import check_local_file
from ..data.split import stratified_split
from ..data.tensors import TensorData
from ..methods import ClientSpec, Method, make_method
from ..models.builders import BuiltModel, build_model
from ..models.checkpointing import enable_checkpointing
from ..models.label_head import with_label_head
from ..models.loss_positions import install_loss_positions
from ..models.precision import float32_trainables
from ..tasks import TASKS
from .advice import shard_warnings
from .planning import resolve_risk_budget

__all__ = [
    "Setup", "ShardInfo", "build_setup", "adapt_model", "client_plans", "client_rate",
    "public_share",
]  # fmt: skip


@dataclass(frozen=True)
class ShardInfo:
    """What a remote data owner reports about its shard: its size and label counts. Both fall
    outside the DP guarantee (the README says so); the server needs the size for q."""

    cid: str
    num_examples: int
    label_counts: tuple[int, ...] = ()


@dataclass
class Setup:
    cfg: Experiment
    method: Method
    built: BuiltModel
    model: nn.Module
    trainer: Trainer
    clients: list[Client]
    eval_data: TensorData
    public: TensorData | None
    histogram: np.ndarray
    warnings: list[str] = field(default_factory=list)
    prefix_layers: int = 0

    @property
    def tokenizer(self) -> Any:
        return self.built.tokenizer

    def label_token_ids(self) -> list[int] | None:
        task = TASKS[self.cfg.model.task]
        return task.label_token_ids(self.tokenizer, self.cfg.data, self.cfg.model)

    def calibration_inputs(self) -> TensorData | None:
        """Content-free inputs for ``data.label_calibration`` (None: raw label-word argmax)."""
        from ..calibration import calibration_inputs

        return calibration_inputs(self.tokenizer, self.cfg.data, self.cfg.model)


def client_rate(cfg: Experiment, index: int, n: int) -> float:
    """Client ``index``'s Poisson rate q (one ``train.sampling_rate``, or batch / shard size),
    after refusing a shard too small for it."""
    q = cfg.train.sampling_rate
    if q > 0:
        if q * n < 1:
            raise ConfigError(
                f"client {index} has {n} examples: an expected batch of q·n = {q * n:.2f} is "
                "below 1. Raise `train.sampling_rate`, use fewer clients, or a larger Dirichlet "
                "alpha."
            )
        return q
    if n < cfg.train.batch_size:
        raise ConfigError(
            f"client {index} has {n} examples, fewer than `train.batch_size` = "
            f"{cfg.train.batch_size}. Use fewer clients, a larger Dirichlet alpha, a smaller "
            "batch size, or `train.sampling_rate`."
        )
    return cfg.train.batch_size / n


def public_share(cfg: Experiment, method: Method) -> float:
    """The share of the training pool marked public: ``data.public_fraction``, else the method's
    (the config refuses two different non-zero shares)."""
    return cfg.data.public_fraction or method.public_fraction()


def _split_public(cfg: Experiment, method: Method, train: TensorData, held_out: TensorData, tok):
    """(public share, private pool, held-out set): the public share never is also a client's
    record. With ``data.public_seed`` naming another split, the share is that split's, and its
    records (and any of identical tokens) leave this split's pool and held-out set."""
    fraction = public_share(cfg, method)
    if fraction <= 0:
        return None, train, held_out
    if cfg.public_seed == cfg.data_seed:
        public, train = _carve(train, fraction, cfg.data_seed)
        return public, train, held_out
    other = load_data(cfg.data, cfg.model, seed=cfg.public_seed, tokenizer=tok)[0]
    public = _carve(other, fraction, cfg.public_seed)[0]
    marked = {_tokens(public, i) for i in range(len(public))}
    return public, _without(train, marked), _without(held_out, marked)


def _carve(train: TensorData, fraction: float, seed: int) -> tuple[TensorData, TensorData]:
    perm = np.random.default_rng(seed + 7919).permutation(len(train))
    k = max(1, int(fraction * len(train)))
    return train.subset(perm[:k]), train.subset(np.sort(perm[k:]))


def _tokens(data: TensorData, i: int) -> bytes:
    return data.input_ids[i][data.attention_mask[i].bool()].numpy().tobytes()


def _without(data: TensorData, marked: set[bytes]) -> TensorData:
    return data.subset([i for i in range(len(data)) if _tokens(data, i) not in marked])


def _proxy_pool(cfg: Experiment, public: TensorData | None) -> tuple[TensorData, TensorData]:
    """``data.pool`` = public: (proxy training pool, public validation set), both from the
    public share, split like the pool (stratified, ``data.eval_fraction`` held out). Neither the
    private pool nor the held-out (test) set is read by such a run."""
    if public is None or len(public) < 2:
        raise ConfigError(
            "`data.pool` = public needs a public share of at least 2 records. Found "
            f"{0 if public is None else len(public)}. Raise data.public_fraction."
        )
    tr, val = stratified_split(
        public.class_labels, cfg.data.eval_fraction, cfg.public_seed + 104729
    )
    return public.subset(tr), public.subset(val)


def _client(cfg: Experiment, index: int, n: int, rank: int, data: TensorData | None) -> Client:
    """Client ``index`` with ``n`` records: its Poisson rate and local steps per round."""
    q = client_rate(cfg, index, n)
    t = cfg.train
    steps = math.ceil(t.local_epochs / q) if t.local_epochs > 0 else t.local_steps
    return Client(ClientSpec(str(index), index, n, rank), data, q, steps)


def _clients(
    cfg: Experiment, method: Method, train: TensorData | None, shards, sizes: list[int]
) -> list[Client]:
    """One client per shard; with ``train`` None (a deployment's server) they hold no data."""
    return [
        _client(cfg, i, n, method.client_rank(i, n, sizes),
                None if train is None else train.subset(shards[i]))
        for i, n in enumerate(sizes)
    ]  # fmt: skip


def _install_prefix_cache(setup: Setup) -> None:
    from ..models.prefix_cache import CachedPrefix, install_prefix_cache

    m = setup.method
    may_train = set(m.trainable_union())
    setup.prefix_layers = install_prefix_cache(setup.model, may_train, setup.built.pad_token_id)
    if setup.prefix_layers:
        prefix = next(x for x in setup.model.modules() if isinstance(x, CachedPrefix))
        sets = [c.data for c in setup.clients if c.data is not None] + [setup.eval_data]
        if setup.public is not None:
            sets.append(setup.public)
        prefix.precompute(d.input_ids for d in sets if len(d))


def adapt_model(cfg: Experiment, method: Method, built: BuiltModel) -> nn.Module:
    """The method's adapters on the shared base, with checkpointing as configured and, over a
    low-precision base, every trained module float32."""
    model = method.setup(built, train_head=cfg.model.train_head)
    if cfg.train.gradient_checkpointing:
        enable_checkpointing(model)
    elif TASKS[cfg.model.task].needs_decoder:
        # (a checkpointed layer recomputes its forward outside the loss: not with checkpoints)
        install_loss_positions(model, set(method.trainable_union()))
    if cfg.model.dtype != "float32" or cfg.model.quantization != "none":
        final = {built.head} if built.head else set()
        float32_trainables(model, method.trainable_union(), final=final)
    return model


def _remote_histogram(cfg: Experiment, shards: list[ShardInfo]) -> np.ndarray:
    width = max([cfg.model.num_labels, *(len(s.label_counts) for s in shards)])
    hist = np.zeros((len(shards), width), dtype=np.int64)
    for i, s in enumerate(shards):
        hist[i, : len(s.label_counts)] = s.label_counts
    return hist


def _owner_clients(cfg: Experiment, method: Method, built: BuiltModel, own: dict[int, str]):
    """A data owner's node with its own files: client index -> that file's records."""
    if public_share(cfg, method) > 0:
        raise ConfigError(
            f"a public share of the pooled training data ({public_share(cfg, method):g}) is "
            "marked, which a node with its own `data-path` does not have. Set "
            "data.public_fraction=0 (and no public init), or use partition ids of a built-in set."
        )
    if method.ranks_need_all_sizes():
        raise ConfigError(
            "`method.rank_rule` = 'shard_size' sets ranks from every shard's size, which a node "
            "with its own `data-path` does not know. Use method.rank_rule=cycle (or ranks)."
        )
    data = {k: load_records(path, cfg.data, cfg.model, built.tokenizer) for k, path in own.items()}
    # a node knows no other shard: ranks that need every size were refused above
    return [
        _client(cfg, k, len(shard), method.client_rank(k, len(shard), ()), shard)
        for k, shard in sorted(data.items())
    ]


def _load(cfg: Experiment, method: Method, built: BuiltModel, remote, own, holds):
    """(clients, held-out data, public share, label histogram, left-out count)."""
    if own is not None:
        clients = _owner_clients(cfg, method, built, own)
        labels = [c.data.class_labels for c in clients]
        width = max(cfg.model.num_labels, *(int(x.max()) + 1 for x in labels))
        hist = np.stack([np.bincount(x, minlength=width) for x in labels])
        # a node evaluates nothing: its held-out set is empty
        return clients, clients[0].data.subset([]), None, hist, 0
    train, eval_data = load_data(cfg.data, cfg.model, seed=cfg.data_seed, tokenizer=built.tokenizer)
    public, train, eval_data = _split_public(cfg, method, train, eval_data, built.tokenizer)
    if cfg.data.pool == "public":
        # the validation part stays out of everything that trains (a public init included)
        train, eval_data = _proxy_pool(cfg, public)
        public = train
    if remote is not None:
        # a deployment's server: the owners' reported sizes; its copy of the pool is dropped
        sizes = [s.num_examples for s in remote]
        clients = _clients(cfg, method, None, None, sizes)
        return clients, eval_data, public, _remote_histogram(cfg, remote), 0
    shards = partition(train.class_labels, cfg.data, seed=cfg.data_seed, groups=train.groups)
    labels = train.class_labels
    histogram = label_histogram(labels, shards, max(cfg.model.num_labels, int(labels.max()) + 1))
    sizes = [len(s) for s in shards]
    left_out = len(train) - sum(sizes) if cfg.data.partition.kind == "by_column" else 0
    clients = _clients(cfg, method, train, shards, sizes)
    if holds is not None:
        # a node keeps only its own clients' shards and evaluates nothing
        for c in clients:
            c.data = c.data if c.spec.cid in holds else None
        eval_data = eval_data.subset([])
    return clients, eval_data, public, histogram, left_out


def client_plans(
    cfg: Experiment, pools: tuple[str, ...] = ("private",)
) -> dict[str, list[tuple[int, float, int]]]:
    """Per data pool, the (records, Poisson rate q, steps per round) of each client the config
    would build, from the split and partition alone (one model build for the tokenizer; no
    adapters, no cache, nothing trained or written)."""
    method = make_method(cfg.method, seed=cfg.seed)
    built = build_model(cfg.model, seed=cfg.seed)
    out = {}
    for pool in pools:
        pooled = replace(cfg, data=replace(cfg.data, pool=pool))
        clients = _load(pooled, method, built, None, None, None)[0]
        out[pool] = [(c.spec.num_examples, c.sampling_rate, c.steps) for c in clients]
    return out


def build_setup(
    cfg: Experiment,
    *,
    remote: list[ShardInfo] | None = None,
    own: dict[int, str] | None = None,
    holds: set[str] | None = None,
) -> Setup:
    """The run's objects.

    - ``remote``: the clients' shards live with their owners (a deployment's server): no
      partition is computed and the clients hold no data; their sizes and label counts are the
      ones the owners reported, in client order.
    - ``own``: a data owner's node holding its own files (client index -> path): only those
      clients exist, each with every record of its file; ``data.name`` is never read.
    - ``holds``: a data owner's node holding partitions of the config's dataset: the same
      split and shards as a simulation, but only these clients keep their data (and only
      theirs goes through the frozen-prefix cache); no held-out set is kept.
    """
    if own is None:  # a missing data file fails before the model is built (owners never read it)
        check_local_file(cfg.data)
    method = make_method(cfg.method, seed=cfg.seed)
    built = with_label_head(cfg, build_model(cfg.model, seed=cfg.seed))
    clients, eval_data, public, histogram, left_out = _load(cfg, method, built, remote, own, holds)
    sizes = [c.spec.num_examples for c in clients]
    warnings = shard_warnings(cfg, sizes, [c.sampling_rate for c in clients], left_out)
    model = adapt_model(cfg, method, built)
    setup = Setup(cfg, method, built, model, None, clients, eval_data, public, histogram, warnings)  # type: ignore[arg-type]
    if cfg.model.cache_frozen_prefix and TASKS[cfg.model.task].prefix_cacheable:
        _install_prefix_cache(setup)
    expected = max(c.expected_batch for c in clients)
    setup.trainer = Trainer(
        cfg, method, model, expected_batch=expected, label_token_ids=setup.label_token_ids()
    )
    for c in clients:
        c.trainer = setup.trainer
    # a risk target's ε budget needs the clients' rates and steps: known from here on
    resolve_risk_budget(
        cfg.privacy,
        rounds=cfg.server.rounds,
        rates_and_steps=[(c.sampling_rate, c.steps) for c in clients],
        init=method.init_event(cfg.privacy.private),
    )
    return setup
