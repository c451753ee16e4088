"""Settings that silently hurt privacy or utility: each becomes one warning line of the run.

Warnings, not errors: the run is still correct and within its budget; the user may have chosen
the setting on purpose. They are logged once and kept in ``summary.json``. One exception: a δ
at or above 1/n for the smallest shard is no guarantee at all, so it is a config error raised
here, when the shard sizes are first known and before anything is written or spent
(:func:`check_delta_for_shards`), unless ``privacy.allow_large_delta`` asks for research on δ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config import ConfigError, Experiment

__all__ = ["check_delta_for_shards", "shard_warnings", "MIN_EXPECTED_BATCH"]

# Below this many records per expected batch, the clipped sum is mostly noise (σC against at
# most a few C of signal).
MIN_EXPECTED_BATCH = 4.0
# A q spread above this factor means calibration (for the largest q) over-noises the others.
RATE_SPREAD = 1.5


def check_delta_for_shards(cfg: Experiment, sizes: Sequence[int]) -> list[str]:
    """Refuse δ >= 1/n for the smallest shard n: publishing one record outright (probability
    1/n per record under a uniform pick) meets that δ, so the run would guarantee nothing.

    Raises :class:`ConfigError` (key, value, 1/n and the fix); with
    ``privacy.allow_large_delta`` returns one loud warning instead. Empty when δ < 1/n, or
    when the run is not private."""
    p = cfg.privacy
    if not (p.private and sizes):
        return []
    small = min(range(len(sizes)), key=lambda i: sizes[i])
    n = sizes[small]
    if n > 0 and p.delta < 1.0 / n:
        return []
    inverse = 1.0 / n if n > 0 else math.inf
    suggest = min(1e-5, 10.0 ** (math.floor(math.log10(inverse)) - 1)) if n > 0 else 1e-5
    found = (
        f"`privacy.delta` = {p.delta:g} is not below 1/n = {inverse:.3g} for the smallest shard "
        f"(client {small}, n = {n} records)"
    )
    if not p.allow_large_delta:
        raise ConfigError(
            f"{found}: a mechanism that publishes one record outright meets that δ, so it is no "
            f"guarantee. Use privacy.delta below 1/n (e.g. {suggest:g}); only to study δ "
            "itself, set privacy.allow_large_delta=true."
        )
    return [
        f"PRIVACY NOT GUARANTEED: {found}, allowed only by privacy.allow_large_delta=true; a "
        "mechanism that publishes one record outright meets that δ. Never report this run's "
        "ε as a privacy guarantee."
    ]


def shard_warnings(
    cfg: Experiment, sizes: Sequence[int], rates: Sequence[float], left_out: int = 0
) -> list[str]:
    """Warnings about the clients' shards: sizes n_k, Poisson rates q_k, records dropped.

    Raises :class:`ConfigError` first when δ >= 1/n (:func:`check_delta_for_shards`)."""
    out = check_delta_for_shards(cfg, sizes)
    p = cfg.privacy
    if p.private and sizes:
        batches = [q * n for q, n in zip(rates, sizes)]
        low = [i for i, b in enumerate(batches) if b < MIN_EXPECTED_BATCH]
        if low:
            i = low[0]
            out.append(
                f"{len(low)} client(s) expect fewer than {MIN_EXPECTED_BATCH:g} records per "
                f"batch (client {i}: q·n = {batches[i]:.2f}); their updates are mostly noise. "
                "Raise train.batch_size or train.sampling_rate, or use fewer clients."
            )
        if (
            cfg.train.sampling_rate == 0
            and p.noise_multiplier is None
            and max(rates) > RATE_SPREAD * min(rates)
        ):
            i = max(range(len(rates)), key=lambda k: rates[k])
            out.append(
                f"train.batch_size sets q per client, from {min(rates):.3g} to {max(rates):.3g}; "
                f"σ is calibrated for the largest (client {i}, n = {sizes[i]}), so every client "
                "gets that noise. Set train.sampling_rate to give all clients the same q."
            )
    if left_out:
        out.append(
            f"data.partition.kind = by_column keeps the {cfg.data.num_clients} largest users; "
            f"{left_out} records of the other users are left out. Raise data.num_clients to "
            "use them."
        )
    return out
