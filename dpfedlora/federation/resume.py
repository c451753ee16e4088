"""What a checkpoint pins, and the refusals of a resume that could under-count privacy.

A checkpoint stores the resolved config and the ledger's length and last-record digest at the
moment it was written. The ledger may have *more* records on resume (write-ahead records of the
round that was interrupted: they stay counted), never fewer, and its first ``count`` records must
be the ones the checkpoint saw. Otherwise ε replayed from the ledger could be below the truth, so
the resume is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accounting import Ledger

from ..config import Experiment, method_config_class, to_dict
from ..errors import UserError
from .rundir import UNHASHED

__all__ = [
    "ResumeError",
    "ledger_pin",
    "check_ledger",
    "config_differences",
    "differences_from",
]


class ResumeError(UserError, RuntimeError):
    """A resume that must not go ahead."""


def ledger_pin(ledger: Ledger | None) -> dict[str, Any]:
    if ledger is None:
        return {"ledger_records": 0, "ledger_digest": ""}
    return {"ledger_records": len(ledger), "ledger_digest": ledger.digest()}


def check_ledger(
    ckpt: dict[str, Any], ledger_path: Path, *, accountant: str, private: bool
) -> None:
    if "ledger_records" not in ckpt:
        raise ResumeError(
            "the checkpoint does not pin its ledger (written by an older version), so a resume "
            "cannot prove the ledger is complete. Start a new run with another --out."
        )
    count, digest = ckpt["ledger_records"], ckpt["ledger_digest"]
    if not private or count == 0:
        return
    if not ledger_path.exists():
        raise ResumeError(
            f"{ledger_path} is missing, but the checkpoint accounts for {count} releases. "
            "Resuming would under-count ε; restore the ledger from a backup."
        )
    ledger = Ledger(ledger_path, accountant=accountant)
    if len(ledger) < count:
        raise ResumeError(
            f"{ledger_path} has {len(ledger)} releases, fewer than the {count} the checkpoint "
            "accounts for. Resuming would under-count ε; restore the ledger from a backup."
        )
    if ledger.digest(count) != digest:
        raise ResumeError(
            f"{ledger_path} was altered: release {count} differs from the one the checkpoint "
            "saw. Restore the ledger from a backup."
        )


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(
    old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """``key: old -> new`` for every leaf that differs. A key the old config lacks (its
    checkpoint predates the key) is no difference when the new value is the key's default:
    the old run ran with that behaviour."""
    a, b = _flatten(old), _flatten(new)
    d = _flatten(defaults) if defaults is not None else {}
    return [
        f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<unset>") != b.get(k, "<unset>")
        and not (k not in a and k in d and b.get(k) == d[k])
    ]


def differences_from(old: dict[str, Any], cfg: Experiment) -> list[str]:
    """What ``cfg`` changes in a run that was started with the resolved config ``old``; keys
    added to the config since that run count only when ``cfg`` sets them off their default."""
    defaults = to_dict(Experiment(method=method_config_class(cfg.method.name)()))
    new = {k: v for k, v in to_dict(cfg).items() if k not in UNHASHED}
    return config_differences({k: v for k, v in old.items() if k not in UNHASHED}, new, defaults)
