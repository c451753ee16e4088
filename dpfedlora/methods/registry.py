"""The method registry: ``register_method`` (refuses duplicates) and ``make_method``.

A method's config schema lives in :mod:`dpfedlora.config.methods` (so configs validate without
importing the methods); registering a method also registers its ``config_cls`` there.
"""

from __future__ import annotations

from ..config import ConfigError, MethodConfig, method_config_class, register_method_config
from .base import Method

__all__ = ["METHODS", "register_method", "make_method"]

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method], *, force: bool = False) -> type[Method]:
    """Class decorator: register a method under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"method class {cls.__name__} needs a non-empty `name`.")
    if name in METHODS and not force:
        raise ValueError(f"method {name!r} is already registered. Pass force=True to replace it.")
    if not issubclass(cls.config_cls, MethodConfig):
        raise ValueError(f"{cls.__name__}.config_cls must subclass MethodConfig.")
    register_method_config(name, cls.config_cls, force=force)
    METHODS[name] = cls
    return cls


def make_method(cfg: MethodConfig, *, seed: int) -> Method:
    cls = METHODS.get(cfg.name)
    if cls is None:
        method_config_class(cfg.name)  # raises the listing error for an unknown name
        raise ConfigError(f"method {cfg.name!r} has a config but no registered Method class.")
    if not isinstance(cfg, cls.config_cls):
        raise ConfigError(f"method {cfg.name!r} needs a {cls.config_cls.__name__}.")
    return cls(cfg, seed=seed)
