"""Fed-SB / LoRA-SB gradient-SVD initialisation, public or private.

LoRA-SB (arXiv:2411.19557) approximates a first full fine-tuning step, ΔW ≈ −η · sign(G), from
the gradient G of the loss with respect to each target weight, and initialises B, R, A from its
truncated SVD: B = U_r, A = V_rᵀ (orthonormal), R = diag(S_r) / s, so s · B R A = trunc_r(ΔW).

* public: G is the plain gradient sum on data the config marks public (no privacy cost; that
  data is removed from the clients' private shards).
* private: each client computes per-sample gradients, clips them jointly over all target layers
  to C, sums and adds N(0, σ_init² C² I) from an explicit generator: one Gaussian mechanism per
  client (each record enters the sum once), recorded in the ledger **before** it runs. The
  server sums the noisy client sums; sign and SVD are post-processing. The noise comes from
the run's noise source (seeded or secure, :mod:`dpfedlora.noise`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..data.tensors import TensorData
from ..noise import NoiseSource
from .aggregation import Tensors
from .base import Method

__all__ = ["gradient_sum", "apply_sign_svd"]


def gradient_sum(
    method: Method,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, TensorData], torch.Tensor],
    data: TensorData,
    *,
    clip_norm: float | None,
    noise_multiplier: float | None,
    noise_source: NoiseSource | None,
    batch_size: int = 64,
) -> Tensors:
    """Σ_i g_i over ``data`` for each target base weight; per-sample clipped and noised when
    ``clip_norm`` and ``noise_multiplier`` are given (the private release)."""
    from opacus import GradSampleModule

    params = dict(model.named_parameters())
    names = [layer.base for layer in method.layers]
    saved = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in names)
    total = {n: torch.zeros_like(params[n]) for n in names}
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum") if clip_norm else None
    try:
        for start in range(0, len(data), batch_size):
            batch = data.subset(torch.arange(start, min(start + batch_size, len(data))))
            batch = batch.to(params[names[0]].device)
            loss = loss_fn(wrapped or model, batch).sum()
            loss.backward()
            if clip_norm is None:
                for n in names:
                    total[n] += params[n].grad
                    params[n].grad = None
                continue
            per = [params[n].grad_sample.reshape(len(batch), -1) for n in names]
            norms = torch.cat(per, dim=1).norm(dim=1)
            factor = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
            for n in names:
                gs = params[n].grad_sample
                total[n] += torch.einsum("i,i...->...", factor, gs)
                params[n].grad_sample = None
                params[n].grad = None
    finally:
        if wrapped is not None:
            wrapped.remove_hooks()
        for n, p in params.items():
            p.requires_grad_(saved[n])
            if hasattr(p, "grad_sample"):
                p.grad_sample = None
            p.grad = None
    if noise_multiplier is not None:
        if clip_norm is None or noise_source is None:
            raise ValueError("a noised gradient sum needs `clip_norm` and `noise_source`.")
        std = noise_multiplier * clip_norm
        for n in names:
            total[n] = noise_source.add_noise(total[n], std=std)
    return total


@torch.no_grad()
def apply_sign_svd(method: Method, model: nn.Module, grads: Tensors, *, step: float) -> None:
    """Set B, R, A of every Fed-SB layer from trunc_r(−step · sign(G))."""
    params = dict(model.named_parameters())
    s = method.scaling()
    r = method.cfg.rank
    for layer in method.layers:
        g = grads[layer.base]
        g = g.T if layer.fan_in_fan_out else g  # to (out, in)
        delta = -step * torch.sign(g)
        u, sv, vh = torch.linalg.svd(delta.double(), full_matrices=False)
        k = min(r, sv.numel())
        b = torch.zeros(layer.out_features, r, dtype=torch.float64)
        a = torch.zeros(r, layer.in_features, dtype=torch.float64)
        rr = torch.zeros(r, r, dtype=torch.float64)
        b[:, :k], a[:k], rr[:k, :k] = u[:, :k], vh[:k], torch.diag(sv[:k]) / s
        params[layer.b].copy_(b.float())
        params[layer.a].copy_(a.float())
        params[layer.r].copy_(rr.float())
