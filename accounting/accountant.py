"""The accountant interface shared by every backend.

An accountant collects events with ``compose`` and answers ``epsilon(delta)`` (always an upper
bound) and ``delta(epsilon)``. Backends implement only two functions over
:class:`~accounting.events.Component` blocks; the base class handles validation, non-private
releases, clamping (RDP and PRV can return tiny negative ε, which is meaningless) and, for the
tight backends, the minimum with the RDP bound (both are upper bounds; the label says which
answered).
"""

from __future__ import annotations

import logging
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

_log = logging.getLogger(__name__)

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
        self._answered_delta: str | None = None

    @property
    def answered_by(self) -> str:
        """The backend that gave the last ε answer (differs from ``name`` after a fallback, or
        when the RDP bound answered: a query too large for this backend, or a smaller bound).
        :meth:`delta` keeps its own label, :attr:`delta_answered_by`, so that reading the
        privacy profile after ε (as attack-risk bounds do) leaves this one as it was."""
        return self._answered or self.name

    @property
    def delta_answered_by(self) -> str:
        """The backend that gave the last δ answer (``name``, or "rdp" when its bound was
        the smaller)."""
        return self._answered_delta or self.name

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
        privacy profile at large δ is :meth:`delta` (ε -> δ), which takes any ε. A tight
        backend answers with the smaller of its bound and the RDP bound (both are upper
        bounds); :attr:`answered_by` says which."""
        check_target_delta(delta)
        comps = self.components
        if any(c.non_private for c in comps):
            return math.inf
        if not comps:
            return 0.0
        self._answered = None
        if self.name == "rdp":
            return max(float(self._epsilon(comps, delta)), 0.0)
        from .history import history_of, rdp_epsilon

        bound = rdp_epsilon(history_of(comps), delta)
        if bound > LARGE_EPSILON:
            self._answered = "rdp"
            return bound
        return self._smaller(max(float(self._epsilon(comps, delta)), 0.0), bound, "ε")

    def delta(self, epsilon: float) -> float:
        """Upper bound on δ at ``epsilon`` for everything composed so far: for a tight backend
        the smaller of its bound and the RDP bound, like :meth:`epsilon`."""
        check_epsilon(epsilon)
        comps = self.components
        if any(c.non_private for c in comps):
            return 1.0
        if not comps:
            return 0.0
        self._answered_delta = None
        label = self._answered  # the ε label is not this query's
        tight = max(float(self._delta(comps, epsilon)), 0.0)  # inf: the backend declined
        if self.name == "rdp":
            return min(tight, 1.0)
        from .history import history_of, rdp_delta

        rdp = rdp_delta(history_of(comps), epsilon)
        if min(tight, 1.0) > rdp:
            self._warn_above_rdp(tight, rdp, "δ")
            self._answered_delta = "rdp"
        elif self._answered != label:  # a fallback inside the backend (prv -> pld)
            self._answered_delta = self._answered
        self._answered = label
        return min(tight, 1.0, rdp)

    def _smaller(self, tight: float, rdp: float, what: str) -> float:
        """min(tight, rdp) for ε, labelled."""
        if tight <= rdp:
            return tight
        self._warn_above_rdp(tight, rdp, what)
        self._answered = "rdp"
        return rdp

    def _warn_above_rdp(self, tight: float, rdp: float, what: str) -> None:
        """A finite tight bound above RDP's means the tight backend's numerics were poor here
        (RDP is never below the exact value): logged. An infinite one is a deliberate
        fallback (no grid fits), not logged."""
        if math.isfinite(tight) and tight > rdp * (1.0 + 1e-6) + 1e-12:
            _log.warning(
                "%s %s = %.6g is above the RDP bound %.6g; answering with RDP (a numerical "
                "limitation of the tight backend here).",
                self.name, what, tight, rdp,
            )  # fmt: skip

    @abstractmethod
    def _epsilon(self, components: list[Component], delta: float) -> float: ...

    @abstractmethod
    def _delta(self, components: list[Component], epsilon: float) -> float: ...
