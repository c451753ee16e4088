"""The local DP-SGD trainer (Opacus) around the shared base model.

One :class:`Trainer` per process holds the shared model and wraps it for per-sample gradients
(:mod:`.grad_sample`) once per trainable set, never per client. Per client and round only cheap
objects are rebuilt: which tensors require grad, the optimizer (the method's choice), and the DP
optimizer around it. A client's state is its adapter tensors, loaded into the shared model.

DP-SGD step (Abadi et al. 2016; Opacus): Poisson-sample a batch with rate q (each record
independently, from the run's noise source), compute per-sample gradients of exactly the
trainable tensors, clip each to L2 norm C jointly over those tensors, sum, add N(0, σ²C²) from the
noise source, divide by the expected batch size, take an optimizer step (:meth:`Trainer.step`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from ..config import Experiment
from ..data.tensors import TensorData
from ..methods.aggregation import Tensors
from ..methods.base import ClientSpec, Method
from ..models.memory import MemoryPlan, model_shape, plan_memory
from ..models.precision import to_host
from ..noise import NoiseSource, make_noise_source
from ..tasks import TASKS, label_word_loss
from .grad_sample import GRAD_SAMPLE_MODES
from .preflight import PreflightError, check_model, check_moved

__all__ = ["Trainer", "LocalResult", "Shard", "plan_for", "tensor_digest"]


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode() + data).hexdigest()


def plan_for(
    cfg: Experiment,
    model: nn.Module,
    trainable: list[str],
    device: torch.device,
    expected_batch: float | None = None,
    free: int | None = None,
) -> MemoryPlan:
    """The memory plan of one DP step of ``model`` (``auto`` choices resolved)."""
    shape = model_shape(model, trainable, cfg.method.rank)
    if cfg.model.label_head and cfg.train.causal_lm_loss == "label_words":
        # the label-word loss computes only the label words' rows of the head
        shape = replace(shape, vocab=len(cfg.data.label_names))
    return plan_memory(
        shape,
        device=device,
        seq_len=cfg.model.max_length,
        expected_batch=expected_batch or cfg.train.batch_size,
        causal_lm=not TASKS[cfg.model.task].has_head,
        mode=cfg.privacy.grad_sample_mode,
        physical_batch_tokens=cfg.train.physical_batch_tokens,
        checkpointing=cfg.train.gradient_checkpointing,
        free=free,
    )


class Shard(Protocol):
    """What local training needs of a client: its data and DP sampling settings."""

    spec: ClientSpec
    data: TensorData
    sampling_rate: float
    steps: int

    @property
    def expected_batch(self) -> float: ...


@dataclass
class LocalResult:
    trained: Tensors
    loss: float
    steps: int
    examples_seen: int
    seconds: float


class Trainer:
    """The shared model, its per-sample-gradient wrapper, and the local training loop."""

    def __init__(
        self,
        cfg: Experiment,
        method: Method,
        model: nn.Module,
        *,
        expected_batch: float | None = None,
        label_token_ids: list[int] | None = None,
    ):
        self.cfg = cfg
        self.method = method
        self.model = model
        self.private = cfg.privacy.private
        self.loss_fn = TASKS[cfg.model.task].loss
        if cfg.train.causal_lm_loss == "label_words":
            if not label_token_ids:
                raise PreflightError(
                    f"`train.causal_lm_loss` = label_words needs a task that answers in words "
                    f"(causal_lm); model.task is {cfg.model.task!r}. Use "
                    "train.causal_lm_loss=response."
                )
            self.loss_fn = functools.partial(label_word_loss, ids=list(label_token_ids))
        self.params = dict(model.named_parameters())
        union = method.trainable_union()
        # what a broadcast may set: the method's tensors, never a frozen base weight (a server
        # could otherwise choose weights that make a client's computation answer its question)
        names = (set(method.managed_names()) | set(union)) & set(self.params)
        self.loadable = {n: (tuple(self.params[n].shape), self.params[n].dtype) for n in names}
        # frozen tensors a view may restore, only to their values now (a digest, not a copy)
        self.restorable = {n: tensor_digest(self.params[n]) for n in method.restored_names()}
        if not union:
            raise PreflightError(f"method {method.name!r} has no trainable tensors.")
        # batches move here per step; client states stay on the host (models.precision)
        self.device = self.params[union[0]].device
        # the memory plan resolves `auto` (grad-sample mode, physical batch size)
        self.plan = plan_for(cfg, model, union, self.device, expected_batch)
        self.physical_batch_tokens = self.plan.physical_batch_tokens
        # non-private training takes the hooks step on the unwrapped model
        self.mode = GRAD_SAMPLE_MODES[self.plan.mode if self.private else "hooks"]
        for n in union:
            self.params[n].requires_grad_(True)
        check_model(model, union)
        for n in union:
            self.params[n].requires_grad_(False)
        self.wrapped: nn.Module = model
        self._hooked: frozenset[str] = frozenset()
        self._checked_moved = False
        # audits swap in DPOptimizer subclasses (signed noise, canary injection); hooks mode only
        self.dp_optimizer_factory: Callable[..., torch.optim.Optimizer] | None = None
        # audits observe every iterate (DP-SGD's guarantee covers releasing all of them)
        self.step_hook: Callable[[], None] | None = None

    def _ensure_hooks(self, names: list[str]) -> None:
        """Per-sample-gradient hooks on exactly the modules that train now. Re-hooked only when
        the trainable set changes (once per run for most methods, once per phase for RoLoRA),
        never per client: a frozen module's backward hook would otherwise fire without captured
        activations."""
        if not self.private or frozenset(names) == self._hooked:
            return
        if self.wrapped is not self.model:
            self.wrapped.remove_hooks()
        self.wrapped = self.mode.wrap(self.model, self.cfg.privacy)
        self._hooked = frozenset(names)

    # ---------------------------------------------------------------- state transfer
    def load(self, tensors: Tensors) -> None:
        """Copy tensors into the shared model (never the model itself)."""
        with torch.no_grad():
            for name, value in tensors.items():
                if name in self.params:
                    self.params[name].copy_(value)

    def refuse_load(self, tensors: Tensors) -> tuple[str, str] | None:
        """(reason code, name) of the first tensor a broadcast may not set, or None: only the
        method's tensors, at the shared model's shape, float32 or the model's dtype, finite; a
        frozen tensor the method restores only at its original value."""
        for name, t in tensors.items():
            if name in self.restorable:
                ok = tuple(t.shape) == tuple(self.params[name].shape) and (
                    tensor_digest(t.to(self.params[name].dtype)) == self.restorable[name]
                )
                if not ok:
                    return "broadcast:frozen_tensor", name
                continue
            if name not in self.loadable:
                return "broadcast:unknown_tensor", name
            shape, dtype = self.loadable[name]
            if tuple(t.shape) != shape:
                return "broadcast:shape", name
            if t.dtype not in (dtype, torch.float32):
                return "broadcast:dtype", name
            if not bool(torch.isfinite(t).all()):
                return "broadcast:non_finite", name
        return None

    def snapshot(self, names: list[str]) -> Tensors:
        """Host copies of the named tensors (pinned where CUDA is present)."""
        return {n: to_host(self.params[n]) for n in names}

    def set_scaling(self, scaling: float) -> None:
        for layer in self.method.layers:
            module = self.model.get_submodule(layer.name)
            if hasattr(module, "scaling"):
                module.scaling["default"] = scaling

    # ---------------------------------------------------------------- training
    def train_local(
        self, shard: Shard, round_idx: int, received: Tensors, *, noise_multiplier: float
    ) -> LocalResult:
        """``shard.steps`` DP-SGD steps from ``received`` on the method's trainable tensors."""
        cfg, method = self.cfg, self.method
        self.load(received)
        self.set_scaling(method.scaling(shard.spec))
        names = method.trainable_names(round_idx)
        wanted = set(names)
        for n, p in self.params.items():
            p.requires_grad_(n in wanted)
        self._ensure_hooks(names)
        params = [self.params[n] for n in names]
        before = self.snapshot(names)
        optimizer = method.make_optimizer(params, cfg.train)
        cid, seed, secure = shard.spec.cid, cfg.seed, cfg.privacy.secure_mode
        # Poisson membership is part of the mechanism: it comes from the same kind of source
        sampler = make_noise_source(secure, seed, "poisson", round_idx, cid)
        if self.private:
            optimizer = self.dp_optimizer(
                optimizer,
                make_noise_source(secure, seed, "noise", round_idx, cid),
                noise_multiplier=noise_multiplier,
                expected_batch=shard.expected_batch,
            )
        self.model.train()
        n = len(shard.data)
        losses, seen, t0 = [], 0, time.perf_counter()
        for _ in range(shard.steps):
            idx = torch.nonzero(sampler.uniform(n) < shard.sampling_rate).flatten()
            seen += int(idx.numel())
            loss = self.step(optimizer, shard.data.subset(idx), params)
            if loss is not None:
                losses.append(loss)
            method.after_step(self.params, shard.spec)
            if self.step_hook is not None:
                self.step_hook()
            if self.private and not self._checked_moved and idx.numel() > 0:
                check_moved(before, self.snapshot(names))
                self._checked_moved = True
        trained = self.snapshot(names)
        for p in params:
            p.requires_grad_(False)
        return LocalResult(
            trained=trained,
            loss=float(sum(losses) / len(losses)) if losses else math.nan,
            steps=shard.steps,
            examples_seen=seen,
            seconds=time.perf_counter() - t0,
        )

    def dp_optimizer(
        self,
        optimizer: torch.optim.Optimizer,
        noise_source: NoiseSource,
        *,
        noise_multiplier: float,
        expected_batch: float | None = None,
    ):
        """The mode's DP optimizer around ``optimizer``, noise from ``noise_source``."""
        # The noised sum is divided by the *expected* batch size (not the realised one), as the
        # Poisson-sampled Gaussian mechanism's analysis assumes.
        kwargs = dict(
            noise_multiplier=noise_multiplier,
            max_grad_norm=self.cfg.privacy.clip_norm,
            expected_batch_size=expected_batch or self.cfg.train.batch_size,
            loss_reduction="mean",
            noise_source=noise_source,
        )
        if self.dp_optimizer_factory is not None:
            if not self.mode.auditable:  # `auto` chose a mode the audits cannot instrument
                raise PreflightError(
                    f"the audit needs hooks-mode per-sample gradients, but the memory plan chose "
                    f"{self.mode.name}. Set privacy.grad_sample_mode=hooks."
                )
            return self.dp_optimizer_factory(optimizer, **kwargs)
        return self.mode.optimizer_cls(optimizer, **kwargs)

    def step(self, optimizer, batch: TensorData, params: list[nn.Parameter]) -> float | None:
        """One (DP-)SGD step on a Poisson batch; an empty batch still gets the noise."""
        optimizer.zero_grad(set_to_none=True)
        if len(batch) > 0:
            return self.mode.step(self, optimizer, batch.to(self.device))
        if not self.private:
            return None
        self.mode.empty_batch(params)  # zero per-sample gradients: the step adds noise only
        optimizer.step()
        return None
