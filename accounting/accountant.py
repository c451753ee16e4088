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

__all__ = [
    "Accountant",
    "check_delta",
    "check_target_delta",
    "check_epsilon",
    "large_delta_problem",
    "LARGE_EPSILON",
    "MAX_DELTA",
]

# Above this RDP bound the tight backends' work grows with ε without useful limit (measured:
# prv-accountant, falling back to PLD, takes 13 s and 0.7 GB at an RDP bound of 574, 30 s and
# 1.5 GB at 1,269, and exhausts memory at 47,528); no one needs those digits, so the RDP bound
# itself is the answer, labelled "rdp".
LARGE_EPSILON = 500.0


# No (ε, δ) guarantee a user asks for may have δ at or above this: publishing each record with
# probability 0.1 is (0, 0.1)-DP. The privacy profile itself (``delta(epsilon)``) and audits
# still handle any δ in (0, 1); only a δ a user names as the guarantee is refused.
MAX_DELTA = 0.1


def check_delta(delta: float, name: str = "delta") -> float:
    """A probability in (0, 1): what the accountant's maths accepts."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
        raise ValueError(f"`{name}` must be in (0, 1). Found {delta!r}.")
    return float(delta)


def large_delta_problem(delta: object) -> str:
    """Why a δ at or above :data:`MAX_DELTA` is refused, after the name of the key or flag
    (shared with the config and the command line, so every entry point says the same)."""
    return (
        f"must be below {MAX_DELTA:g} (a δ this large is no guarantee: a mechanism that "
        f"publishes a random {MAX_DELTA:.0%} of records meets it). Found {delta!r}. Use a value "
        "below 1/n, e.g. 1e-5."
    )


def check_target_delta(delta: float, name: str = "delta") -> float:
    """δ of a guarantee a user asks for: in (0, :data:`MAX_DELTA`)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0.0:
        raise ValueError(f"`{name}` must be in (0, {MAX_DELTA:g}). Found {delta!r}.")
    if not delta < MAX_DELTA:
        raise ValueError(f"`{name}` " + large_delta_problem(delta))
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
        """Upper bound on ε at ``delta`` for everything composed so far (0 if nothing).

        ``delta`` must be below :data:`MAX_DELTA`: larger values guarantee nothing. The
        privacy profile at large δ is :meth:`delta` (ε -> δ), which takes any ε."""
        check_target_delta(delta)
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
