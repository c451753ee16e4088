"""The accountant interface shared by every backend.

An accountant collects events with ``compose`` and answers ``epsilon(delta)`` (always an upper
bound) and ``delta(epsilon)``. Backends implement only two functions over
:class:`~accounting.events.Component` blocks; the base class handles validation, non-private
releases and clamping (RDP and PRV can return tiny negative ε, which is meaningless).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

from .events import Component, Event, flatten

__all__ = ["Accountant", "check_delta", "check_epsilon", "LARGE_EPSILON"]

# Above this RDP bound the tight backends' work grows with ε without useful limit (measured:
# prv-accountant, falling back to PLD, takes 13 s and 0.7 GB at an RDP bound of 574, 30 s and
# 1.5 GB at 1,269, and exhausts memory at 47,528); no one needs those digits, so the RDP bound
# itself is the answer, labelled "rdp".
LARGE_EPSILON = 500.0


def check_delta(delta: float, name: str = "delta") -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
        raise ValueError(f"`{name}` must be in (0, 1). Found {delta!r}.")
    return float(delta)


def check_epsilon(epsilon: float, name: str = "epsilon") -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= 0.0:
        raise ValueError(f"`{name}` must be a number >= 0. Found {epsilon!r}.")
    return float(epsilon)


class Accountant(ABC):
    """Composes events and converts the composition to (ε, δ) upper bounds.

    Subclasses implement :meth:`_epsilon` and :meth:`_delta` over merged homogeneous blocks
    (all private: non-private blocks are handled here).
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self._events: list[tuple[Event, int]] = []
        self._answered: str | None = None

    @property
    def answered_by(self) -> str:
        """The backend that gave the last answer (differs from ``name`` after a fallback, or
        when the RDP bound answered a query too large for this backend)."""
        return self._answered or self.name

    def compose(self, event: Event, count: int = 1) -> Accountant:
        """Add ``count`` sequential applications of ``event``. Returns self (chainable)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"`count` must be an integer >= 1. Found {count!r}.")
        if not isinstance(event, Event):
            raise TypeError(f"`event` must be an accounting Event. Found {type(event).__name__}.")
        self._events.append((event, count))
        return self

    @property
    def components(self) -> list[Component]:
        """Homogeneous (q, σ, steps) blocks of everything composed so far, equal blocks merged."""
        merged: dict[tuple[float, float], int] = {}
        for event, count in self._events:
            for c in flatten(event):
                key = (c.sampling_rate, c.noise_multiplier)
                merged[key] = merged.get(key, 0) + c.count * count
        return [Component(q, s, n) for (q, s), n in merged.items()]

    def epsilon(self, delta: float) -> float:
        """Upper bound on ε at ``delta`` for everything composed so far (0 if nothing)."""
        check_delta(delta)
        comps = self.components
        if any(c.non_private for c in comps):
            return math.inf
        if not comps:
            return 0.0
        self._answered = None
        if self.name != "rdp":
            from .history import history_of, rdp_epsilon

            bound = rdp_epsilon(history_of(comps), delta)
            if bound > LARGE_EPSILON:
                self._answered = "rdp"
                return bound
        return max(float(self._epsilon(comps, delta)), 0.0)

    def delta(self, epsilon: float) -> float:
        """Upper bound on δ at ``epsilon`` for everything composed so far."""
        check_epsilon(epsilon)
        comps = self.components
        if any(c.non_private for c in comps):
            return 1.0
        if not comps:
            return 0.0
        return min(max(float(self._delta(comps, epsilon)), 0.0), 1.0)

    @abstractmethod
    def _epsilon(self, components: list[Component], delta: float) -> float: ...

    @abstractmethod
    def _delta(self, components: list[Component], epsilon: float) -> float: ...
