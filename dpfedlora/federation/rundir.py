"""The run directory: config.yaml, metrics.jsonl, ledger.jsonl, checkpoint/, summary.json, plots/.

Checkpoints are written atomically (temporary file, fsync, rename), so a crash leaves either the
previous or the new checkpoint, never a torn one. The ledger is separate and already durable.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from accounting.ledger import fsync_directory

from ..config import Experiment, to_dict

__all__ = ["RunDir", "config_hash", "json_safe", "UNHASHED"]


def json_safe(obj: Any) -> Any:
    """JSON has no infinity or NaN: write them as null."""
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# config sections that change no result: left out of the hash, so a run resumes with them
# changed and a sweep finds its cells again (logging: trackers on or off)
UNHASHED = ("logging",)


def config_hash(cfg: Experiment) -> str:
    data = {k: v for k, v in to_dict(cfg).items() if k not in UNHASHED}
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)  # the rename itself must be durable


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def pause_file(self) -> Path:
        """Created by anyone (a sweep at its deadline, a user): the run stops before its next
        round, as after SIGUSR1, and removes the file."""
        return self.path / "PAUSE"

    def take_pause_request(self) -> bool:
        try:
            self.pause_file.unlink()
        except FileNotFoundError:
            return False
        return True

    @property
    def ledger(self) -> Path:
        return self.path / "ledger.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint" / "state.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def create(self, cfg: Experiment) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoint").mkdir(exist_ok=True)
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        _atomic_write_bytes(self.path / "config.yaml", text.encode())

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(json_safe(row)) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        return [json.loads(x) for x in self.metrics.read_text().splitlines() if x.strip()]

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(json_safe(r)) + "\n" for r in rows)
        _atomic_write_bytes(self.metrics, text.encode())

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        import io

        buf = io.BytesIO()
        torch.save(payload, buf)
        _atomic_write_bytes(self.checkpoint, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint.exists():
            return None
        return torch.load(self.checkpoint, weights_only=False)

    def write_summary(self, summary: dict[str, Any]) -> None:
        _atomic_write_bytes(
            self.summary, (json.dumps(json_safe(summary), indent=2) + "\n").encode()
        )
