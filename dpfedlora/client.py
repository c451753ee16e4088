"""Clients and the local DP-SGD engine (Opacus).

One :class:`Engine` per federation holds the shared base model and wraps it **once** in Opacus's
``GradSampleModule`` (hooks on the modules whose tensors the method may ever train). Per client
and round only cheap objects are rebuilt: which tensors require grad, the optimizer, and the
``DPOptimizer`` around it. A client's state is its adapter tensors, loaded into the shared model.

DP-SGD step (Abadi et al. 2016; Opacus): Poisson-sample a batch with rate q (each record
independently, from a seeded generator), compute per-sample gradients of exactly the trainable
tensors, clip each to L2 norm C jointly over those tensors, sum, add N(0, σ²C²) from an explicit
noise generator, divide by the expected batch size, take an optimizer step.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from accounting import Event, dpsgd_event

from .aggregation import Tensors
from .config import Experiment
from .data import TensorData
from .galore import GaLoreAdamW
from .methods.base import ClientSpec, Method
from .noise import NoiseSource, derive_generator, make_noise_source
from .preflight import PreflightError, check_model, check_moved

__all__ = ["Client", "Engine", "LocalResult", "derive_generator", "LOSSES"]


# ------------------------------------------------------------------------------ losses
def _classification_loss(model: nn.Module, batch: TensorData) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return nn.functional.cross_entropy(logits, batch.labels, reduction="none")


def _causal_lm_loss(model: nn.Module, batch: TensorData) -> torch.Tensor:
    """Per-example mean over that example's target tokens, then mean over examples: each example
    is one DP unit whatever its length (HF's built-in loss averages over all tokens instead)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits, targets = logits[:, :-1], batch.labels[:, 1:]
    mask = (targets != -100).float()
    tok = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.clamp(min=0).reshape(-1), reduction="none"
    ).view_as(mask)
    return (tok * mask).sum(1) / mask.sum(1).clamp(min=1.0)


# task -> per-example losses (shape [B]); the training loss is their mean.
LOSSES: dict[str, Callable[[nn.Module, TensorData], torch.Tensor]] = {
    "classification": _classification_loss,
    "causal_lm": _causal_lm_loss,
}


def _make_optimizer(cfg: Experiment, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    local = getattr(cfg.method, "local_optimizer", None) or cfg.train.optimizer
    factories: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "sgd": lambda: torch.optim.SGD(
            params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        ),
        "adamw": lambda: torch.optim.AdamW(
            params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        ),
        "galore": lambda: GaLoreAdamW(
            params,
            lr=cfg.train.lr,
            rank=cfg.method.galore_rank,  # type: ignore[attr-defined]
            update_proj_gap=cfg.method.galore_update_proj_gap,  # type: ignore[attr-defined]
            scale=cfg.method.galore_scale,  # type: ignore[attr-defined]
            weight_decay=cfg.train.weight_decay,
        ),
    }
    if local not in factories:
        raise ValueError(
            f"`train.optimizer` must be one of {', '.join(factories)}. Found {local!r}."
        )
    return factories[local]()


@dataclass
class LocalResult:
    trained: Tensors
    loss: float
    steps: int
    examples_seen: int
    seconds: float


@dataclass
class Client:
    """One data shard with its DP-SGD settings; holds no model."""

    spec: ClientSpec
    data: TensorData
    sampling_rate: float  # q = expected batch / shard size
    steps: int  # local DP-SGD steps per round

    @property
    def expected_batch(self) -> float:
        return self.sampling_rate * len(self.data)

    def planned_event(self, noise_multiplier: float) -> Event:
        return dpsgd_event(
            noise_multiplier=noise_multiplier, sampling_rate=self.sampling_rate, steps=self.steps
        )

    def train(self, engine: Engine, round_idx: int, received: Tensors) -> LocalResult:
        return engine.train_client(self, round_idx, received)


class Engine:
    """The shared model, the Opacus wrapper (built once) and the local training loop."""

    def __init__(
        self, cfg: Experiment, method: Method, model: nn.Module, *, noise_multiplier: float
    ):
        self.cfg = cfg
        self.method = method
        self.model = model
        self.noise_multiplier = noise_multiplier
        self.private = cfg.privacy.private
        self.loss_fn = LOSSES[cfg.model.task]
        self.params = dict(model.named_parameters())
        union = sorted(set(method.trainable_names(1)) | set(method.trainable_names(2)))
        if not union:
            raise PreflightError(f"method {method.name!r} has no trainable tensors.")
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
        """Opacus hooks on exactly the modules that train now. Re-hooked only when the
        trainable set changes (once per run for most methods, once per phase for RoLoRA),
        never per client: a frozen module's backward hook would otherwise fire without
        captured activations."""
        if not self.private or frozenset(names) == self._hooked:
            return
        if self.wrapped is not self.model:
            self.wrapped.remove_hooks()
        self.wrapped = self._wrap(self.model)
        self._hooked = frozenset(names)

    def _wrap(self, model: nn.Module) -> nn.Module:
        mode = self.cfg.privacy.grad_sample_mode
        if mode == "ghost":
            from opacus.grad_sample import GradSampleModuleFastGradientClipping

            return GradSampleModuleFastGradientClipping(
                model,
                batch_first=True,
                loss_reduction="mean",
                max_grad_norm=self.cfg.privacy.clip_norm,
                use_ghost_clipping=True,
            )
        from opacus import GradSampleModule

        return GradSampleModule(model, batch_first=True, loss_reduction="mean")

    # ---------------------------------------------------------------- state transfer
    def load(self, tensors: Tensors) -> None:
        """Copy tensors into the shared model (never the model itself)."""
        with torch.no_grad():
            for name, value in tensors.items():
                if name in self.params:
                    self.params[name].copy_(value)

    def snapshot(self, names: list[str]) -> Tensors:
        return {n: self.params[n].detach().clone() for n in names}

    def set_scaling(self, scaling: float) -> None:
        for layer in self.method.layers:
            module = self.model.get_submodule(layer.name)
            if hasattr(module, "scaling"):
                module.scaling["default"] = scaling

    # ---------------------------------------------------------------- training
    def train_client(self, client: Client, round_idx: int, received: Tensors) -> LocalResult:
        cfg, method = self.cfg, self.method
        self.load(received)
        self.set_scaling(method.scaling(client.spec))
        names = method.trainable_names(round_idx)
        for n, p in self.params.items():
            p.requires_grad_(n in names)
        self._ensure_hooks(names)
        params = [self.params[n] for n in names]
        before = self.snapshot(names)
        optimizer = _make_optimizer(cfg, params)
        cid, seed, secure = client.spec.cid, self.cfg.seed, self.cfg.privacy.secure_mode
        # Poisson membership is part of the mechanism: it comes from the same kind of source
        sampler = make_noise_source(secure, seed, "poisson", round_idx, cid)
        if self.private:
            optimizer = self._dp_optimizer(
                optimizer,
                make_noise_source(secure, seed, "noise", round_idx, cid),
                expected_batch=client.expected_batch,
            )
        self.model.train()
        n = len(client.data)
        losses, seen, t0 = [], 0, time.perf_counter()
        for _ in range(client.steps):
            mask = sampler.uniform(n) < client.sampling_rate
            idx = torch.nonzero(mask).flatten()
            seen += int(idx.numel())
            loss = self._step(optimizer, client.data.subset(idx), params)
            if loss is not None:
                losses.append(loss)
            method.after_step(self.params, client.spec)
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
            steps=client.steps,
            examples_seen=seen,
            seconds=time.perf_counter() - t0,
        )

    def _dp_optimizer(
        self,
        optimizer: torch.optim.Optimizer,
        noise_source: NoiseSource,
        expected_batch: float | None = None,
    ):
        from .dp_optimizer import DP_OPTIMIZERS

        # The noised sum is divided by the *expected* batch size (not the realised one), as the
        # Poisson-sampled Gaussian mechanism's analysis assumes.
        kwargs = dict(
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.cfg.privacy.clip_norm,
            expected_batch_size=expected_batch or self.cfg.train.batch_size,
            loss_reduction="mean",
            noise_source=noise_source,
        )
        if self.dp_optimizer_factory is not None:
            return self.dp_optimizer_factory(optimizer, **kwargs)
        return DP_OPTIMIZERS[self.cfg.privacy.grad_sample_mode](optimizer, **kwargs)

    def _step(self, optimizer, batch: TensorData, params: list[nn.Parameter]) -> float | None:
        """One (DP-)SGD step on a Poisson batch; an empty batch still gets the noise."""
        optimizer.zero_grad(set_to_none=True)
        if len(batch) == 0:
            if not self.private:
                return None
            for p in params:  # zero per-sample gradients: the step adds noise only
                p.grad_sample = p.new_zeros((0, *p.shape))
                p._norm_sample = p.new_zeros((0,))
                p.grad = torch.zeros_like(p)  # ghost mode reads the clipped sum from .grad
            optimizer.step()
            return None
        if self.private and self.cfg.privacy.grad_sample_mode == "ghost":
            return self._ghost_step(optimizer, batch.trimmed())
        total = 0.0
        chunks = batch.physical_batches(self.cfg.train.physical_batch_tokens)
        for i, chunk in enumerate(chunks):
            per_example = self.loss_fn(self.wrapped, chunk)
            total += float(per_example.detach().sum())
            # Private: Opacus rescales a chunk's mean loss by the chunk size, so every example's
            # gradient is exact. Non-private: the chunks' gradients add up to the batch mean.
            loss = per_example.mean() if self.private else per_example.sum() / len(batch)
            with warnings.catch_warnings():
                # Opacus's full backward hooks warn when no *input* requires grad; with frozen
                # embeddings that is always the case and harmless (parameter grads are exact).
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            if self.private and i < len(chunks) - 1:
                # As Opacus's BatchMemoryManager: clip this chunk's per-sample gradients into
                # the running sum, then free them; noise and the division by the expected
                # batch size happen once, at the real step below.
                optimizer.signal_skip_step(do_skip=True)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        optimizer.step()
        return total / len(batch)

    def _ghost_step(self, optimizer, batch: TensorData) -> float:
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        # Ghost clipping needs per-example losses through Opacus's loss wrapper (it runs two
        # backward passes); the wrapper switches our criterion to reduction="none".
        per_example = _PerExample(self.loss_fn)
        dp_loss = DPLossFastGradientClipping(self.wrapped, optimizer, per_example, "mean")
        loss = dp_loss(self.wrapped, batch)
        loss.backward()
        optimizer.step()
        return float(loss.detach())


class _PerExample:
    """Adapter so Opacus's ghost-clipping loss wrapper receives per-example losses."""

    def __init__(self, loss_fn: Callable[[nn.Module, TensorData], torch.Tensor]) -> None:
        self.loss_fn = loss_fn
        self.reduction = "mean"

    def __call__(self, model: nn.Module, batch: TensorData) -> torch.Tensor:
        losses = self.loss_fn(model, batch)
        return losses if self.reduction == "none" else losses.mean()
