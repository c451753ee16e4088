"""The messages between server and clients, and their bytes.

``Broadcast`` is all a client receives for a round; ``Reply`` is all the server gets back. Both
serialise to one safetensors blob: the tensors as tensors, everything else as JSON in the
header's metadata. Round trips are lossless (dtype, shape and every bit of every tensor), so a
client behind a pipe, another process or a Flower SuperNode computes exactly what an
in-process client does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from accounting import Event, event_from_json, event_to_json

__all__ = ["Broadcast", "Reply", "REPLY_STATUSES"]

Tensors = dict[str, torch.Tensor]

# ok: trained, payload attached; skipped: the owner's budget refused the round (nothing spent);
# failed: training raised or produced non-finite tensors (its spend stays counted)
REPLY_STATUSES = ("ok", "skipped", "failed")


def _pack(tensors: Tensors, meta: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    # safetensors needs contiguous, non-aliased tensors; clone keeps the caller's untouched
    blob = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    return save(blob, metadata={"json": json.dumps(meta, allow_nan=True)})


def _unpack(data: bytes) -> tuple[Tensors, dict[str, Any]]:
    from safetensors.torch import load

    tensors = load(data)
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads(header.get("__metadata__", {}).get("json", "{}"))
    return dict(tensors), meta


@dataclass
class Broadcast:
    """Round ``round`` for client ``client``: its view of the global state and σ."""

    round: int
    client: str
    tensors: Tensors
    noise_multiplier: float

    def to_bytes(self) -> bytes:
        meta = {"kind": "broadcast", "round": self.round, "client": self.client,
                "noise_multiplier": self.noise_multiplier}  # fmt: skip
        return _pack(self.tensors, meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> Broadcast:
        tensors, meta = _unpack(data)
        if meta.get("kind") != "broadcast":
            raise ValueError(f"not a Broadcast message (kind {meta.get('kind')!r}).")
        return cls(meta["round"], meta["client"], tensors, float(meta["noise_multiplier"]))

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


@dataclass
class Reply:
    """What client ``client`` sends back after round ``round``."""

    round: int
    client: str
    status: str
    payload: Tensors = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    event: Event | None = None  # the release the client recorded (write-ahead) for this round
    error: str = ""

    def __post_init__(self) -> None:
        if self.status not in REPLY_STATUSES:
            raise ValueError(f"`status` must be one of {REPLY_STATUSES}. Found {self.status!r}.")

    @property
    def bytes_up(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.payload.values())

    def to_bytes(self) -> bytes:
        meta = {
            "kind": "reply",
            "round": self.round,
            "client": self.client,
            "status": self.status,
            "metrics": {k: _float(v) for k, v in self.metrics.items()},
            "event": None if self.event is None else event_to_json(self.event),
            "error": self.error,
        }
        return _pack(self.payload, meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> Reply:
        tensors, meta = _unpack(data)
        if meta.get("kind") != "reply":
            raise ValueError(f"not a Reply message (kind {meta.get('kind')!r}).")
        event = None if meta["event"] is None else event_from_json(meta["event"])
        metrics = {k: math.nan if v is None else v for k, v in meta["metrics"].items()}
        return cls(
            meta["round"], meta["client"], meta["status"], tensors, metrics, event, meta["error"]
        )


def _float(v: Any) -> Any:
    # JSON has no NaN in strict readers; NaN (e.g. a loss with diagnostics off) travels as null
    return None if isinstance(v, float) and math.isnan(v) else v
