"""Federated adapter methods, one module each, registered by name.

``make_method(config, seed=...)`` is the only factory; ``register_method`` refuses duplicates.
"""

from __future__ import annotations

from . import fedex, fedit, fedsb, ffa, flexlora, full, rolora  # noqa: F401  (registration)
from .base import ClientSpec, Method
from .registry import METHODS, make_method, register_method

__all__ = ["METHODS", "ClientSpec", "Method", "make_method", "register_method"]
