"""Pure aggregation helpers on tensor dicts. They never modify their inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "Tensors",
    "normalize_weights",
    "weighted_mean",
    "delta_weight",
    "lora_scaling",
    "truncated_split",
]

Tensors = dict[str, torch.Tensor]


def normalize_weights(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    if not weights or total <= 0 or any(w < 0 for w in weights):
        raise ValueError(
            f"aggregation weights must be >= 0 with a positive sum. Found {list(weights)}."
        )
    return [float(w) / total for w in weights]


def weighted_mean(payloads: Sequence[Tensors], weights: Sequence[float]) -> Tensors:
    """Σ_k p_k · payload_k per key, p normalised to sum to 1. All payloads need the same keys."""
    if not payloads:
        raise ValueError("weighted_mean needs at least one payload.")
    p = normalize_weights(weights)
    keys = payloads[0].keys()
    for i, pl in enumerate(payloads[1:], start=1):
        if pl.keys() != keys:
            raise ValueError(f"payload {i} has keys {sorted(pl)}; payload 0 has {sorted(keys)}.")
    return {k: sum(w * pl[k] for w, pl in zip(p, payloads)) for k in keys}  # type: ignore[misc]


def lora_scaling(alpha: float, rank: int, rslora: bool) -> float:
    """peft's scale: alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023)."""
    return alpha / (math.sqrt(rank) if rslora else rank)


def delta_weight(
    b: torch.Tensor,
    a: torch.Tensor,
    scaling: float,
    *,
    fan_in_fan_out: bool,
    r: torch.Tensor | None = None,
) -> torch.Tensor:
    """s · B (R) A in the base weight's own layout, following peft's ``get_delta_weight``:
    (out, in) for nn.Linear, transposed to (in, out) only when ``fan_in_fan_out`` (Conv1D)."""
    core = b @ r @ a if r is not None else b @ a
    out = scaling * core
    return out.T if fan_in_fan_out else out


def truncated_split(
    delta: torch.Tensor, rank: int, scaling: float, *, fan_in_fan_out: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexLoRA redistribution (Bai et al. 2024, official split): SVD ΔW = U S Vᵀ, then
    B = U[:, :r] diag(S[:r]) / s and A = Vᵀ[:r], so that s · B · A = trunc_r(ΔW)."""
    w = delta.T if fan_in_fan_out else delta  # back to (out, in)
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    k = min(rank, s.numel())
    b = (u[:, :k] * s[:k]) / scaling
    a = vh[:k]
    if k < rank:  # a layer smaller than the rank: pad with zero directions
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
        a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])], dim=0)
    return b.to(delta.dtype), a.to(delta.dtype)


def exact_factors(
    delta: torch.Tensor, *, fan_in_fan_out: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW (in W's layout) as B A with B (out, k), A (k, in) and k its numerical rank: the
    singular values above s_max · max(out, in) · eps(float32) (NumPy's ``matrix_rank`` rule;
    the rest are float32 round-off). Exact to float precision; used to export FlexLoRA's and
    FedEx's full-size global updates as a plain LoRA."""
    w = (delta.T if fan_in_fan_out else delta).double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    tol = float(s.max()) * max(w.shape) * torch.finfo(torch.float32).eps if s.numel() else 0.0
    k = max(1, int((s > tol).sum()))
    return (u[:, :k] * s[:k]).to(delta.dtype), vh[:k].contiguous().to(delta.dtype)
