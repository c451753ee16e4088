"""Per-sample gradient modes (``privacy.grad_sample_mode``) in a registry.

A mode says how the shared model is wrapped for per-sample gradients, which DP optimizer clips
and noises them, and how one logical DP step runs on a Poisson batch:

* ``hooks``: per-sample gradients materialised by hooks (our tensor hooks when every trainable
  tensor is in an ``nn.Linear``, :mod:`.linear_grads`; Opacus's ``GradSampleModule`` otherwise); the
  batch may run in length-sorted physical chunks (``train.physical_batch_tokens``) whose clipped
  gradients accumulate before the one noised step (as Opacus's ``BatchMemoryManager``).
* ``ghost`` (Opacus's fast gradient clipping): per-sample norms without per-sample gradients, two
  backward passes through Opacus's loss wrapper; less memory for wide layers. A sample with a
  non-finite per-sample norm is left out by recomputing the step without it (:func:`_ghost_step`,
  with its timing caveat).

Non-private training uses the ``hooks`` step on the unwrapped model (a plain mean gradient).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule
from torch import nn

from ..config import PrivacyConfig
from ..data.tensors import TensorData
from .dp_optimizer import FusedDPOptimizer, SourcedGhostDPOptimizer

__all__ = [
    "GradSampleMode",
    "GRAD_SAMPLE_MODES",
    "register_grad_sample_mode",
    "AUTO",
    "is_auto",
    "auditable",
]

# `privacy.grad_sample_mode: auto`: the memory plan (models.memory) picks a registered mode
AUTO = "auto"


def is_auto(name: str) -> bool:
    return name == AUTO


def auditable(name: str) -> bool:
    """Whether the audits can instrument this mode (auto: the plan picks hooks whenever they
    fit, and the audits' trainer checks the mode it got)."""
    return is_auto(name) or GRAD_SAMPLE_MODES[name].auditable


@dataclass(frozen=True)
class GradSampleMode:
    name: str
    wrap: Callable[[nn.Module, PrivacyConfig], nn.Module]
    optimizer_cls: type
    # (trainer, optimizer, batch) -> mean training loss of the batch
    step: Callable[[Any, torch.optim.Optimizer, TensorData], float]
    # params -> None: what the DP optimizer reads for an empty Poisson batch (noise only)
    empty_batch: Callable[[list[nn.Parameter]], None] = lambda params: None
    # the audits instrument the DP optimizer's per-sample gradients (canaries, signed noise)
    auditable: bool = False


def _wrap_hooks(model: nn.Module, privacy: PrivacyConfig) -> nn.Module:
    from .linear_grads import LinearGradSampler, supported

    # The same per-sample gradients either way (a test compares them); ours skips the module
    # full backward hooks that dominate Opacus's per-step cost on small models.
    if supported(model):
        return LinearGradSampler(model, loss_reduction="mean")
    return GradSampleModule(model, batch_first=True, loss_reduction="mean")


def _wrap_ghost(model: nn.Module, privacy: PrivacyConfig) -> nn.Module:
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    return GradSampleModuleFastGradientClipping(
        model,
        batch_first=True,
        loss_reduction="mean",
        max_grad_norm=privacy.clip_norm,
        use_ghost_clipping=True,
    )


def _hooks_step(trainer, optimizer, batch: TensorData) -> float:
    total = 0.0
    chunks = batch.physical_batches(trainer.physical_batch_tokens)
    for i, chunk in enumerate(chunks):
        per_example = trainer.loss_fn(trainer.wrapped, chunk)
        detached = per_example.detach()
        total += _finite_sum(detached) if trainer.private else float(detached.sum())
        # Private: Opacus rescales a chunk's mean loss by the chunk size, so every example's
        # gradient is exact. Non-private: the chunks' gradients add up to the batch mean.
        loss = per_example.mean() if trainer.private else per_example.sum() / len(batch)
        if isinstance(trainer.wrapped, GradSampleModule):
            with warnings.catch_warnings():
                # Opacus's full backward hooks warn when no *input* requires grad; with frozen
                # embeddings that is always the case and harmless (parameter grads are exact).
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
        else:  # our tensor hooks and plain models: nothing to silence
            loss.backward()
        if trainer.private and i < len(chunks) - 1:
            # As Opacus's BatchMemoryManager: clip this chunk's per-sample gradients into the
            # running sum, then free them; noise and the division by the expected batch size
            # happen once, at the real step below.
            optimizer.signal_skip_step(do_skip=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    optimizer.step()
    return total / len(batch)


class _PerExample:
    """Adapter so Opacus's ghost-clipping loss wrapper receives per-example losses."""

    def __init__(self, loss_fn: Callable[[nn.Module, TensorData], torch.Tensor]) -> None:
        self.loss_fn = loss_fn
        self.reduction = "mean"

    def __call__(self, model: nn.Module, batch: TensorData) -> torch.Tensor:
        losses = self.loss_fn(model, batch)
        return losses if self.reduction == "none" else losses.mean()


def _ghost_backward(trainer, optimizer, batch: TensorData):
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    # Ghost clipping needs per-example losses through Opacus's loss wrapper (it runs two
    # backward passes); the wrapper switches our criterion to reduction="none".
    dp_loss = DPLossFastGradientClipping(
        trainer.wrapped, optimizer, _PerExample(trainer.loss_fn), "mean"
    )
    loss = dp_loss(trainer.wrapped, batch)
    loss.backward()
    return loss


def _ghost_step(trainer, optimizer, batch: TensorData) -> float:
    """One ghost-clipping step; samples whose per-sample gradient norm is not finite are left
    out of the clipped sum.

    Opacus's second backward weights sample i's loss by c_i = C / (‖g_i‖ + 1e-6), so a NaN
    norm makes c_i NaN, and even c_i = 0 cannot help when the sample's activations or
    backprops are non-finite (its zero-weighted terms are 0·∞ = NaN in the batched weight
    gradient). The only exact remedy without per-sample gradients is to recompute: when a norm
    is not finite, the step is redone on the other samples, which equals their clipped sum,
    i.e. the bad samples contribute zero (:mod:`.dp_optimizer`'s docstring). Limitation: that
    recomputation is a second forward and backward, so the step takes longer when such a sample
    was drawn. The failure oracle becomes a timing signal, which a party that can time a
    client's steps (or its whole round) may still read; hooks mode, whose repair is the same
    work whatever the data, does not give it. Prefer hooks where timing is observable."""
    batch = batch.trimmed()
    loss = _ghost_backward(trainer, optimizer, batch)
    bad = ~torch.isfinite(trainer.wrapped.per_sample_gradient_norms.detach())
    per_example = loss.loss_per_sample.detach()
    if bool(bad.any()):
        optimizer.record_nonfinite_rows(bad)
        optimizer.zero_grad(set_to_none=True)
        keep = torch.nonzero(~bad).flatten().cpu()
        if keep.numel() > 0:
            _ghost_backward(trainer, optimizer, batch.subset(keep).trimmed())
        else:
            _empty_ghost(optimizer.params)
    optimizer.step()
    if bool(torch.isfinite(per_example).all()):
        return float(loss.detach())
    return _finite_sum(per_example) / len(batch)


def _finite_sum(per_example: torch.Tensor) -> float:
    """The sum of the finite per-example losses: the reported training loss must not turn
    NaN because one record's loss is (that would tell the server the record was sampled)."""
    return float(torch.where(torch.isfinite(per_example), per_example, 0.0).sum())


def _empty_hooks(params: list[nn.Parameter]) -> None:
    for p in params:
        p.grad_sample = p.new_zeros((0, *p.shape))


def _empty_ghost(params: list[nn.Parameter]) -> None:
    # ghost clipping reads per-sample norms and the clipped sum from .grad
    for p in params:
        p.grad_sample = p.new_zeros((0, *p.shape))
        p._norm_sample = p.new_zeros((0,))
        p.grad = torch.zeros_like(p)


GRAD_SAMPLE_MODES: dict[str, GradSampleMode] = {}


def register_grad_sample_mode(mode: GradSampleMode) -> GradSampleMode:
    if mode.name in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad-sample mode {mode.name!r} is already registered.")
    GRAD_SAMPLE_MODES[mode.name] = mode
    return mode


register_grad_sample_mode(
    GradSampleMode(
        "hooks", _wrap_hooks, FusedDPOptimizer, _hooks_step, _empty_hooks, auditable=True
    )
)
register_grad_sample_mode(
    GradSampleMode("ghost", _wrap_ghost, SourcedGhostDPOptimizer, _ghost_step, _empty_ghost)
)
