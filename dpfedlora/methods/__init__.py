"""Federated adapter methods, one module each, registered by name.

``make_method(config, seed=...)`` is the only factory; ``register_method`` refuses duplicates.
"""

from __future__ import annotations

from . import fedex, fedit, fedsb, ffa, flexlora, full, rolora  # noqa: F401,E402  (registration)
from .base import METHODS, ClientSpec, Method, make_method, method_config_class, register_method

__all__ = [
    "METHODS",
    "ClientSpec",
    "Method",
    "make_method",
    "method_config_class",
    "register_method",
]
