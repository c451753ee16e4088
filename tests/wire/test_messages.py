"""Broadcast and Reply survive bytes without loss: dtypes, shapes, every bit, the event."""

from __future__ import annotations

import math

import pytest
import torch

from accounting import Composed, Gaussian, dpsgd_event
from dpfedlora.wire import Broadcast, Reply


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.lora_B.default.weight": torch.randn(32, 4, generator=g),
        "half": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "double": torch.randn(7, generator=g, dtype=torch.float64),
        "ints": torch.arange(6).reshape(2, 3),
        # a non-contiguous view and special values must arrive as they were
        "transposed": torch.randn(4, 6, generator=g).T,
        "special": torch.tensor([math.inf, -math.inf, -0.0, 1e-45]),
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def test_broadcast_round_trips_every_bit():
    msg = Broadcast(3, "7", _tensors(), 1.2345678901234567)
    back = Broadcast.from_bytes(msg.to_bytes())
    assert (back.round, back.client, back.noise_multiplier) == (3, "7", 1.2345678901234567)
    assert _same(msg.tensors, back.tensors)
    # -0.0 keeps its sign bit
    assert torch.signbit(back.tensors["special"][2])


def test_reply_round_trips_payload_metrics_and_event():
    event = Composed(
        (Gaussian(5.0), dpsgd_event(noise_multiplier=1.1, sampling_rate=0.1, steps=10))
    )
    msg = Reply(2, "0", "ok", _tensors(), {"loss": math.nan, "steps": 10, "seconds": 0.5}, event)
    back = Reply.from_bytes(msg.to_bytes())
    assert _same(msg.payload, back.payload)
    assert back.event == event and back.status == "ok" and back.error == ""
    assert math.isnan(back.metrics["loss"]) and back.metrics["steps"] == 10
    assert (
        back.bytes_up
        == msg.bytes_up
        == sum(t.numel() * t.element_size() for t in _tensors().values())
    )


def test_a_skipped_reply_has_no_payload_and_no_event():
    msg = Reply(1, "3", "skipped", metrics={"planned_epsilon": 3.2}, error="over budget")
    back = Reply.from_bytes(msg.to_bytes())
    assert back.payload == {} and back.event is None and back.error == "over budget"


def test_messages_refuse_each_others_bytes_and_bad_statuses():
    b = Broadcast(1, "0", {}, 1.0).to_bytes()
    with pytest.raises(ValueError, match="not a Reply"):
        Reply.from_bytes(b)
    with pytest.raises(ValueError, match="not a Broadcast"):
        Broadcast.from_bytes(Reply(1, "0", "failed", error="x").to_bytes())
    with pytest.raises(ValueError, match="status"):
        Reply(1, "0", "maybe")
