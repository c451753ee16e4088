"""Privacy events: frozen, JSON-serialisable descriptions of private releases.

Training code emits events; it never computes epsilon itself. An accountant turns a sequence of
events into an (epsilon, delta) upper bound. The neighbouring relation throughout is
add-or-remove-one record (the relation Opacus, prv-accountant and dp-accounting's defaults use).

Schema rules (from dp-accounting's ``dp_event`` docstring, because a ledger outlives the code):
a field's meaning never changes, new fields must be optional, and unknown fields are rejected on
decode. Decoding goes through the explicit ``EVENT_TYPES`` table, never through a stored module or
class name, so an edited ledger file cannot make us import arbitrary code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

__all__ = [
    "Event",
    "Gaussian",
    "PoissonSampled",
    "SelfComposed",
    "Composed",
    "NonPrivate",
    "Component",
    "EVENT_TYPES",
    "EventFormatError",
    "event_to_json",
    "event_from_json",
    "flatten",
    "dpsgd_event",
]


class EventFormatError(ValueError):
    """A serialised event does not match the schema."""


class Event:
    """Base class of all events. Subclasses are frozen dataclasses registered in EVENT_TYPES."""

    type_name: ClassVar[str]


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number. Found {value!r}.")
    if math.isinf(value):
        raise ValueError(f"`{name}` must be finite. Found {value!r}.")


@dataclass(frozen=True)
class Gaussian(Event):
    """Gaussian mechanism: releases sum_i v_i + N(0, s^2 I) where every ||v_i|| <= C.

    ``noise_multiplier`` = s / C (unitless). Sensitivity is C under add-or-remove-one.
    """

    noise_multiplier: float
    type_name: ClassVar[str] = "Gaussian"

    def __post_init__(self) -> None:
        _check_positive("noise_multiplier", self.noise_multiplier)


@dataclass(frozen=True)
class PoissonSampled(Event):
    """Each record is included independently with ``sampling_rate`` q, then ``event`` runs on the
    sample (privacy amplification by Poisson subsampling)."""

    sampling_rate: float
    event: Event
    type_name: ClassVar[str] = "PoissonSampled"

    def __post_init__(self) -> None:
        q = self.sampling_rate
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q <= 1.0:
            raise ValueError(f"`sampling_rate` must be in (0, 1]. Found {q!r}.")
        if not isinstance(self.event, Gaussian):
            # Amplification is implemented for the subsampled Gaussian only; refuse the rest
            # rather than account for them wrongly.
            raise ValueError(
                "`PoissonSampled.event` must be a Gaussian event. "
                f"Found {type(self.event).__name__}."
            )


@dataclass(frozen=True)
class SelfComposed(Event):
    """``event`` applied ``count`` times in sequence (adaptive composition)."""

    event: Event
    count: int
    type_name: ClassVar[str] = "SelfComposed"

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"`count` must be an integer >= 1. Found {self.count!r}.")


@dataclass(frozen=True)
class Composed(Event):
    """A heterogeneous sequence of events (different q, sigma, step counts), composed adaptively."""

    events: tuple[Event, ...]
    type_name: ClassVar[str] = "Composed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(self.events))
        for e in self.events:
            if not isinstance(e, Event):
                raise ValueError(f"`Composed.events` must hold events. Found {e!r}.")


@dataclass(frozen=True)
class NonPrivate(Event):
    """A release without a DP guarantee (epsilon = infinity). Used only by explicit unsafe audits;
    recording it keeps the ledger honest about what happened."""

    reason: str = ""
    type_name: ClassVar[str] = "NonPrivate"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type_name: cls for cls in (Gaussian, PoissonSampled, SelfComposed, Composed, NonPrivate)
}


def event_to_json(event: Event) -> dict[str, Any]:
    """Encode an event as a plain dict with a ``type`` key (nested events encoded recursively)."""
    out: dict[str, Any] = {"type": event.type_name}
    for f in fields(event):  # type: ignore[arg-type]
        value = getattr(event, f.name)
        if isinstance(value, Event):
            value = event_to_json(value)
        elif isinstance(value, tuple):
            value = [event_to_json(v) for v in value]
        out[f.name] = value
    return out


def event_from_json(data: Any) -> Event:
    """Decode an event written by :func:`event_to_json`.

    Raises:
        EventFormatError: unknown type, unknown or missing field, or invalid value.
    """
    if not isinstance(data, dict):
        raise EventFormatError(f"an event must be a JSON object. Found {data!r}.")
    type_name = data.get("type")
    cls = EVENT_TYPES.get(type_name)  # type: ignore[arg-type]
    if cls is None:
        raise EventFormatError(
            f"unknown event type {type_name!r}. Allowed: {', '.join(sorted(EVENT_TYPES))}."
        )
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names - {"type"}
    if unknown:
        raise EventFormatError(
            f"unknown field(s) {sorted(unknown)} in {type_name} event. Allowed: {sorted(names)}."
        )
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            if f.default is not MISSING:
                continue
            raise EventFormatError(f"{type_name} event is missing field {f.name!r}.")
        value = data[f.name]
        if f.name == "event":
            value = event_from_json(value)
        elif f.name == "events":
            if not isinstance(value, list):
                raise EventFormatError(f"`events` must be a list. Found {value!r}.")
            value = tuple(event_from_json(v) for v in value)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise EventFormatError(f"invalid {type_name} event: {exc}") from exc


@dataclass(frozen=True)
class Component:
    """One homogeneous block: ``count`` steps of a Poisson-subsampled Gaussian (q, sigma).

    Every event reduces to a list of these (q = 1 for an unsampled Gaussian); backends only
    need to account for this one shape. ``noise_multiplier = inf`` never occurs; a non-private
    release is represented by ``noise_multiplier = 0``.
    """

    sampling_rate: float
    noise_multiplier: float
    count: int

    @property
    def non_private(self) -> bool:
        return self.noise_multiplier == 0.0


def _flatten_gaussian(e: Gaussian, count: int) -> list[Component]:
    return [Component(1.0, e.noise_multiplier, count)]


def _flatten_poisson(e: PoissonSampled, count: int) -> list[Component]:
    inner = e.event
    assert isinstance(inner, Gaussian)  # enforced in PoissonSampled.__post_init__
    return [Component(float(e.sampling_rate), inner.noise_multiplier, count)]


def _flatten_self_composed(e: SelfComposed, count: int) -> list[Component]:
    return _flatten(e.event, count * e.count)


def _flatten_composed(e: Composed, count: int) -> list[Component]:
    once = [c for sub in e.events for c in _flatten(sub, 1)]
    return [Component(c.sampling_rate, c.noise_multiplier, c.count * count) for c in once]


def _flatten_non_private(e: NonPrivate, count: int) -> list[Component]:
    return [Component(1.0, 0.0, count)]


_FLATTENERS: dict[type[Event], Callable[[Any, int], list[Component]]] = {
    Gaussian: _flatten_gaussian,
    PoissonSampled: _flatten_poisson,
    SelfComposed: _flatten_self_composed,
    Composed: _flatten_composed,
    NonPrivate: _flatten_non_private,
}


def _flatten(event: Event, count: int) -> list[Component]:
    try:
        fn = _FLATTENERS[type(event)]
    except KeyError:
        raise ValueError(f"no accounting rule for event type {type(event).__name__}.") from None
    return fn(event, count)


def flatten(event: Event) -> list[Component]:
    """Reduce an event to homogeneous blocks, merging blocks with equal (q, sigma).

    Merging is valid because composition is commutative for the accountants we use (they
    compose privacy-loss distributions or RDP curves, which do not depend on order).
    """
    merged: dict[tuple[float, float], int] = {}
    for c in _flatten(event, 1):
        key = (c.sampling_rate, c.noise_multiplier)
        merged[key] = merged.get(key, 0) + c.count
    return [Component(q, s, n) for (q, s), n in merged.items()]


def dpsgd_event(*, noise_multiplier: float, sampling_rate: float, steps: int) -> Event:
    """The event of ``steps`` DP-SGD steps with Poisson sampling rate q and multiplier sigma."""
    return SelfComposed(PoissonSampled(sampling_rate, Gaussian(noise_multiplier)), steps)
