"""White-box gradient canaries: their design, and the score that tells included from excluded.

A gradient canary is a record whose clipped gradient at step t is a vector of norm at most C
chosen by the auditor in advance. DP-SGD's guarantee holds for *any* such sequence, including
zero at some steps, so the auditor is free to schedule when each canary "speaks":

* ``all``: every canary speaks at every step, along one fixed random direction of norm C. With
  m canaries in p trainable numbers their directions overlap; the overlap adds variance
  ≈ q·m/(2p) (in units of one canary's signal) to every score.
* ``rotating``: canaries are split into ⌈m/p⌉ groups of at most p, each group an orthonormal set
  (times C), and group g speaks only at steps t ≡ g (mod groups). No overlap at all, but each
  canary speaks in only a 1/groups share of the steps.

The design is chosen before the run from (σ, q, m, p): per speaking step the evidence is 1/var,
so ``rotating`` wins when share · (σ² + q·m/(2p)) > σ², always without noise. Both are fixed
functions of the seed, independent of which canaries are included, so the one-run bound holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["CanaryDesign", "design_canaries", "gradient_scores"]


@dataclass
class CanaryDesign:
    directions: torch.Tensor  # [m, p] float64, each row of norm C
    groups: int  # speaking groups; 1 = every canary speaks at every step
    kind: str  # "all" | "rotating"
    shapes: list[torch.Size]  # per trainable tensor, to split a row back into tensors

    @property
    def canaries(self) -> int:
        return int(self.directions.shape[0])

    def speaks(self, step: int) -> torch.Tensor:
        """Boolean mask of the canaries that speak at (0-based) logical step ``step``."""
        ids = torch.arange(self.canaries)
        return (ids % self.groups) == (step % self.groups)

    def contribution(self, step: int, active: torch.Tensor) -> list[torch.Tensor]:
        """Sum of the speaking, active canaries' gradients at ``step``, per trainable tensor."""
        weights = (active & self.speaks(step)).double()
        flat = weights @ self.directions
        out, start = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            out.append(flat[start : start + n].view(shape))
            start += n
        return out

    def project(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """⟨update, d_i⟩ for every canary i, the update given per trainable tensor."""
        flat = torch.cat([t.double().flatten() for t in tensors])
        return self.directions @ flat


def design_canaries(
    shapes: list[torch.Size],
    canaries: int,
    *,
    clip_norm: float,
    noise_multiplier: float,
    sampling_rate: float,
    generator: torch.Generator,
) -> CanaryDesign:
    p = sum(math.prod(s) for s in shapes)
    groups = math.ceil(canaries / p)
    overlap = sampling_rate * canaries / (2 * p)
    var = noise_multiplier**2
    rotating = var == 0 or (var + overlap) / groups > var
    if not rotating:
        raw = torch.randn((canaries, p), generator=generator, dtype=torch.float64)
        directions = raw * (clip_norm / raw.norm(dim=1, keepdim=True))
        return CanaryDesign(directions, 1, "all", list(shapes))
    directions = torch.empty((canaries, p), dtype=torch.float64)
    for g in range(groups):
        members = torch.arange(g, canaries, groups)
        basis, _ = torch.linalg.qr(
            torch.randn((p, len(members)), generator=generator, dtype=torch.float64)
        )
        directions[members] = clip_norm * basis.T
    return CanaryDesign(directions, groups, "rotating", list(shapes))


def gradient_scores(
    real: list[list[torch.Tensor]],
    shadow: list[list[torch.Tensor]],
    design: CanaryDesign,
    *,
    unit: float,
    sampling_rate: float,
) -> torch.Tensor:
    """Per-canary log-likelihood ratio of "included" vs "excluded" from the per-step iterates.

    At step t, x_ti = ⟨u_t, d_i⟩ / unit with u_t the real update minus the shadow update (local
    SGD: lr · (canaries + noise) / expected batch), so x_ti ≈ 1 when canary i joined the step
    and ≈ 0 otherwise, plus noise and the other canaries' overlap, N(0, s_t²), s_t estimated
    robustly over the speaking canaries (most are absent from any one step). The score sums, over
    the steps where canary i speaks, the Neyman–Pearson statistic of the mixture
    (1 − q)·N(0, s²) + q·N(1, s²) against N(0, s²): log(1 − q + q·exp((x − 1/2) / s²)).
    """
    total = torch.zeros(design.canaries, dtype=torch.float64)
    log_out = math.log1p(-sampling_rate) if sampling_rate < 1 else -math.inf
    log_in = math.log(sampling_rate)
    for t in range(1, len(real)):
        u = [
            (s1 - s0) - (r1 - r0)
            for s0, s1, r0, r1 in zip(shadow[t - 1], shadow[t], real[t - 1], real[t])
        ]
        x = design.project(u) / unit
        speaking = design.speaks(t - 1)
        xs = x[speaking]
        mad = (xs - xs.median()).abs().median()
        s2 = max(float(1.4826 * mad) ** 2, 1e-12)
        llr = torch.logaddexp(torch.full_like(xs, log_out), log_in + (xs - 0.5) / s2)
        total[speaking] += llr
    return total
