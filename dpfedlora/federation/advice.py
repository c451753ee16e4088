"""Settings that silently hurt privacy or utility: each becomes one warning line of the run.

Warnings, not errors: the run is still correct and within its budget; the user may have chosen
the setting on purpose. They are logged once and kept in ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Experiment

__all__ = ["shard_warnings", "MIN_EXPECTED_BATCH"]

# Below this many records per expected batch, the clipped sum is mostly noise (σC against at
# most a few C of signal).
MIN_EXPECTED_BATCH = 4.0
# A q spread above this factor means calibration (for the largest q) over-noises the others.
RATE_SPREAD = 1.5


def shard_warnings(
    cfg: Experiment, sizes: Sequence[int], rates: Sequence[float], left_out: int = 0
) -> list[str]:
    """Warnings about the clients' shards: sizes n_k, Poisson rates q_k, records dropped."""
    out: list[str] = []
    p = cfg.privacy
    if p.private and sizes:
        small = min(range(len(sizes)), key=lambda i: sizes[i])
        if p.delta >= 1.0 / sizes[small]:
            out.append(
                f"privacy.delta = {p.delta:g} is not below 1/n = {1 / sizes[small]:.3g} for "
                f"client {small} (n = {sizes[small]}): a mechanism that leaks one record "
                "outright meets that δ. Use privacy.delta below 1/n."
            )
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
