"""A small GaLore-AdamW (Zhao et al. 2024, "GaLore: Memory-Efficient LLM Training by Gradient
Low-Rank Projection", arXiv:2403.03507).

For each 2-D parameter with gradient G (m x n): every ``update_proj_gap`` steps take P = the top
``rank`` singular vectors of G (left ones if m <= n, else right ones), keep Adam moments of the
projected gradient R = Pᵀ G (or G P), and apply ``scale`` · P · adam(R). Other parameters get
plain AdamW. It is a normal ``torch.optim.Optimizer``, so Opacus's DPOptimizer wraps it: the
gradient it sees is already clipped and noised, so the projector is post-processing.

Why our own: galore-torch projects only when each param group carries a ``rank`` key, and its
released use in the weight-averaging paper silently ran plain AdamW (methods.md §7.2); a test
here checks that projector state exists after one step.
"""

from __future__ import annotations

import math

import torch

__all__ = ["GaLoreAdamW"]


class GaLoreAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        *,
        lr: float,
        rank: int,
        update_proj_gap: int = 50,
        scale: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if rank < 1:
            raise ValueError(f"`rank` must be a positive integer. Found {rank}.")
        defaults = dict(
            lr=lr,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                t = state["step"]
                project = g.dim() == 2 and min(g.shape) > group["rank"]
                if project:
                    left = g.shape[0] <= g.shape[1]
                    if "projector" not in state or (t - 1) % group["update_proj_gap"] == 0:
                        u, _, vh = torch.linalg.svd(g.float(), full_matrices=False)
                        state["projector"] = (
                            u[:, : group["rank"]] if left else vh[: group["rank"]].T
                        ).to(g.dtype)
                    proj = state["projector"]
                    g = proj.T @ g if left else g @ proj
                if "exp_avg" not in state or state["exp_avg"].shape != g.shape:
                    state["exp_avg"] = torch.zeros_like(g)
                    state["exp_avg_sq"] = torch.zeros_like(g)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step_size = group["lr"] * math.sqrt(1 - b2**t) / (1 - b1**t)
                update = m / (v.sqrt() + group["eps"])
                if project:
                    update = (proj @ update if left else update @ proj.T) * group["scale"]
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-step_size)
        return loss
