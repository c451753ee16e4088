"""Local optimizers by name (``train.optimizer``); methods may add their own (GaLore: ``full``).

Under DP the optimizer sees only the clipped, noised gradient, so any choice is post-processing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import TrainConfig

__all__ = ["OPTIMIZERS", "make_optimizer"]

Factory = Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]

OPTIMIZERS: dict[str, Factory] = {
    "sgd": lambda params, t: torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay),
    "adamw": lambda params, t: torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay),
}


def make_optimizer(name: str, params: list[nn.Parameter], train: TrainConfig):
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(
            f"`train.optimizer` must be one of {', '.join(OPTIMIZERS)}. Found {name!r}."
        ) from None
    return factory(params, train)
