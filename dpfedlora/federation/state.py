"""The server's checkpointed state: one :class:`RunState`, saved and loaded whole.

It pins what a resume must match: the resolved config (and its hash), σ, and the ledger's
length and last-record digest when the checkpoint was written (:mod:`.resume`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..methods.aggregation import Tensors
from .rundir import RunDir

__all__ = ["RunState"]


@dataclass
class RunState:
    round: int  # rounds completed
    state: Tensors  # the method's global state
    noise_multiplier: float
    config_hash: str
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per round
    bytes_up: int = 0
    bytes_down: int = 0
    faulty: list[dict[str, Any]] = field(default_factory=list)
    stopped_reason: str = "completed"
    ledger_records: int = 0
    ledger_digest: str = ""

    @property
    def running(self) -> bool:
        return self.stopped_reason == "completed"

    def advance(self, rnd: int, state: Tensors, row: dict[str, Any]) -> None:
        self.round, self.state = rnd, state
        self.history.append(row)
        self.bytes_up += row["bytes_up"]
        self.bytes_down += row["bytes_down"]

    def save(self, run_dir: RunDir, pin: dict[str, Any]) -> None:
        """Atomically, with the ledger pin (its length and digest now)."""
        self.ledger_records, self.ledger_digest = pin["ledger_records"], pin["ledger_digest"]
        run_dir.save_checkpoint(asdict(self))

    @classmethod
    def load(cls, run_dir: RunDir) -> RunState | None:
        data = run_dir.load_checkpoint()
        return None if data is None else cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def pin(self) -> dict[str, Any]:
        return {"ledger_records": self.ledger_records, "ledger_digest": self.ledger_digest}
