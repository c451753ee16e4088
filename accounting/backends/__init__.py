"""Registry of accountant backends.

Each backend lives in its own module and imports its third-party library only when that module
is loaded, so ``make_accountant("rdp")`` never pays for importing prv-accountant (and no backend
ever imports torch). Register new backends with :func:`register_backend`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..accountant import Accountant

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "register_backend",
    "make_accountant",
    "available_backends",
]

# name -> zero-argument loader returning the Accountant subclass.
BACKENDS: dict[str, Callable[[], type[Accountant]]] = {}


def register_backend(
    name: str, loader: Callable[[], type[Accountant]], *, force: bool = False
) -> None:
    """Register ``loader`` (returns an Accountant class) under ``name``."""
    if name in BACKENDS and not force:
        raise ValueError(
            f"accountant backend {name!r} is already registered. Pass force=True to replace it."
        )
    BACKENDS[name] = loader


def _module_loader(module: str, cls: str) -> Callable[[], type[Accountant]]:
    def load() -> type[Accountant]:
        return getattr(importlib.import_module(module, __name__), cls)

    return load


register_backend("fastpld", _module_loader(".fastpld", "FastPLDBackend"))
register_backend("prv", _module_loader(".prv", "PRVBackend"))
register_backend("pld", _module_loader(".pld", "PLDBackend"))
register_backend("rdp", _module_loader(".rdp", "RDPBackend"))


# Our own numpy PLD: tight (within 2 % of dp-accounting's PLD, never below a lower bound, from 1
# to 10⁶ steps and δ down to 1e-10; +0.004 % on the 20-block benchmark history) and fast
# (0.3 s for that history's 10,000 steps, 0.06 s for 10⁶ steps; benchmarks/bench_accounting.py
# --fastpld); see accounting/pld_grid.py and accounting/backends/_pld_fft.py.
DEFAULT_BACKEND = "fastpld"


def available_backends() -> list[str]:
    return sorted(BACKENDS)


def make_accountant(name: str = DEFAULT_BACKEND, **options: object) -> Accountant:
    """A fresh accountant of backend ``name`` ("fastpld", "prv", "pld" or "rdp")."""
    try:
        loader = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"`accountant` must be one of {', '.join(available_backends())}. Found {name!r}."
        ) from None
    return loader()(**options)
