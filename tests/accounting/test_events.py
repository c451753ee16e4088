import json

import pytest

from accounting import (
    Composed,
    EventFormatError,
    Gaussian,
    NonPrivate,
    PoissonSampled,
    SelfComposed,
    dpsgd_event,
    event_from_json,
    event_to_json,
)
from accounting.events import Component, flatten

EVENTS = [
    Gaussian(1.3),
    PoissonSampled(0.01, Gaussian(1.0)),
    SelfComposed(PoissonSampled(0.02, Gaussian(0.9)), 250),
    Composed((dpsgd_event(noise_multiplier=1, sampling_rate=0.01, steps=5), Gaussian(4.0))),
    NonPrivate("unsafe audit"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_json_round_trip(event):
    text = json.dumps(event_to_json(event))
    assert event_from_json(json.loads(text)) == event


def test_encoding_is_explicit():
    assert event_to_json(SelfComposed(PoissonSampled(0.5, Gaussian(2.0)), 3)) == {
        "type": "SelfComposed",
        "event": {
            "type": "PoissonSampled",
            "sampling_rate": 0.5,
            "event": {"type": "Gaussian", "noise_multiplier": 2.0},
        },
        "count": 3,
    }


@pytest.mark.parametrize(
    "data, message",
    [
        ({"type": "os.system", "noise_multiplier": 1}, "unknown event type 'os.system'"),
        (
            {"type": "Gaussian", "noise_multiplier": 1, "extra": 2},
            r"unknown field\(s\) \['extra'\]",
        ),
        ({"type": "Gaussian"}, "missing field 'noise_multiplier'"),
        ({"type": "Gaussian", "noise_multiplier": -1}, "must be a positive number"),
        (
            {
                "type": "SelfComposed",
                "event": {"type": "Gaussian", "noise_multiplier": 1},
                "count": 0,
            },
            "count",
        ),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_json_rejected(data, message):
    with pytest.raises(EventFormatError, match=message):
        event_from_json(data)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Gaussian(0.0), "`noise_multiplier` must be a positive number. Found 0.0"),
        (
            lambda: PoissonSampled(1.5, Gaussian(1.0)),
            r"`sampling_rate` must be in \(0, 1\]. Found 1.5",
        ),
        (lambda: PoissonSampled(0.0, Gaussian(1.0)), "sampling_rate"),
        (lambda: SelfComposed(Gaussian(1.0), 0), "`count` must be an integer >= 1. Found 0"),
        (lambda: PoissonSampled(0.1, NonPrivate()), "must be a Gaussian event"),
    ],
)
def test_invalid_events(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_flatten_merges_equal_blocks():
    e = Composed(
        (
            dpsgd_event(noise_multiplier=1.0, sampling_rate=0.01, steps=10),
            dpsgd_event(noise_multiplier=2.0, sampling_rate=0.01, steps=3),
            SelfComposed(dpsgd_event(noise_multiplier=1.0, sampling_rate=0.01, steps=10), 4),
            Gaussian(3.0),
        )
    )
    assert sorted(flatten(e), key=lambda c: c.noise_multiplier) == [
        Component(0.01, 1.0, 50),
        Component(0.01, 2.0, 3),
        Component(1.0, 3.0, 1),
    ]
