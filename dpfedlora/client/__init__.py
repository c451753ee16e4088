"""The client side: the DP trainer (:mod:`.trainer`, with grad-sample modes in
:mod:`.grad_sample` and noise-source DP optimizers in :mod:`.dp_optimizer`), preflight checks
(:mod:`.preflight`) and the Client (:mod:`.client`)."""

from __future__ import annotations

from .client import Budget, Client
from .trainer import LocalResult, Trainer

__all__ = ["Budget", "Client", "LocalResult", "Trainer"]
