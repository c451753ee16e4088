"""The privacy ledger: an append-only, fsync'd JSONL file of releases.

One line per release::

    {"client": "3", "round": 2, "scope": "train", "event": {"type": "SelfComposed", ...}}

Write-ahead protocol: a release is appended (and fsync'd) **before** the private data is touched,
so a crash can over-count spending but never under-count it. Inside :meth:`Ledger.group` (one
in-process round of many clients) each append is written and flushed to the OS before the data
is touched (so it survives the process dying) and one fsync at the group's end makes them all
durable against a machine crash before anything derived from the data leaves the process.
Replay rebuilds ε per client by composing that client's events with a fresh accountant; events
are data, so replay is exact.

Corruption policy:
* a truncated **last** line (a crash while writing) is reported with a warning. Its release never
  started (data is touched only after the append returned), so it is not counted; the file is
  never rewritten. The next append first terminates the fragment and writes a marker
  ``{"repaired_truncated_line": N}`` so the evidence stays in the file and later loads accept it;
* any other line that is not a valid record is an error naming its line number;
* unknown fields are rejected.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .accountant import check_target_delta
from .backends import DEFAULT_BACKEND, make_accountant
from .events import Event, EventFormatError, event_from_json, event_to_json, flatten
from .history import History, best_bound, extend, rdp_epsilon
from .risk import DEFAULT_FPRS, Risk, history_risk

__all__ = [
    "fsync_directory",
    "Record",
    "Ledger",
    "LedgerError",
    "LedgerWarning",
    "BudgetExceededError",
    "SCOPES",
]

# What a release was for. "train": local DP-SGD steps; "init": a private, data-dependent
# initialisation (Fed-SB gradient SVD); "audit": canary training in a privacy audit.
# "describe": a data owner's opt-in noised description of its shard (a label histogram).
SCOPES: tuple[str, ...] = ("train", "init", "audit", "describe")
_FIELDS = ("client", "round", "scope", "event")
_MARKER = "repaired_truncated_line"


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make a file's creation or rename durable: fsync its directory entry (POSIX)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


class LedgerError(ValueError):
    """The ledger file is corrupt or a record is invalid."""


class LedgerWarning(UserWarning):
    """Something in the ledger needs attention but spending is still bounded."""


class BudgetExceededError(RuntimeError):
    """A planned release would take a client's ε above its budget."""

    def __init__(
        self,
        *,
        client: str,
        current_epsilon: float,
        planned_epsilon: float,
        budget: float,
        delta: float,
    ) -> None:
        self.client = client
        self.current_epsilon = current_epsilon
        self.planned_epsilon = planned_epsilon
        self.budget = budget
        self.delta = delta
        super().__init__(
            f"client {client!r}: the planned release would raise ε from {current_epsilon:.4f} to "
            f"{planned_epsilon:.4f}, above the budget {budget:g} (δ={delta:g}). "
            "Skip this client, or raise the budget."
        )


@dataclass(frozen=True)
class Record:
    client: str
    round: int
    scope: str
    event: Event

    def __post_init__(self) -> None:
        if not isinstance(self.client, str) or not self.client:
            raise LedgerError(f"`client` must be a non-empty string. Found {self.client!r}.")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise LedgerError(f"`round` must be an integer >= 0. Found {self.round!r}.")
        if self.scope not in SCOPES:
            raise LedgerError(f"`scope` must be one of {', '.join(SCOPES)}. Found {self.scope!r}.")
        if not isinstance(self.event, Event):
            raise LedgerError(f"`event` must be an accounting Event. Found {self.event!r}.")

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "round": self.round,
            "scope": self.scope,
            "event": event_to_json(self.event),
        }

    def digest(self) -> str:
        """SHA-256 of the record's canonical JSON: checkpoints pin the ledger with it."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_json(cls, data: Any) -> Record:
        if not isinstance(data, dict):
            raise LedgerError(f"a record must be a JSON object. Found {type(data).__name__}.")
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise LedgerError(f"unknown field(s) {sorted(unknown)}. Allowed: {', '.join(_FIELDS)}.")
        missing = [f for f in _FIELDS if f not in data]
        if missing:
            raise LedgerError(f"missing field(s) {missing}.")
        try:
            event = event_from_json(data["event"])
        except EventFormatError as exc:
            raise LedgerError(str(exc)) from exc
        return cls(client=data["client"], round=data["round"], scope=data["scope"], event=event)


class Ledger:
    """Append-only JSONL privacy ledger with per-client replay and budget checks.

    Args:
        path: the JSONL file (created on first append).
        accountant: backend used for replay ("fastpld", "prv", "pld", "rdp").
    """

    def __init__(self, path: str | os.PathLike[str], *, accountant: str = DEFAULT_BACKEND) -> None:
        self.path = Path(path)
        self.accountant = accountant
        make_accountant(accountant)  # fail fast on an unknown backend name
        self.records: list[Record] = []
        self.truncated_line: int | None = None  # 1-based line number of an unrepaired fragment
        self._n_lines = 0
        # per client: its history (merged (q, σ) blocks), so nothing rescans the records
        self._history: dict[str, History] = {}
        # backends that actually answered (a PRV failure falls back to PLD, recorded here)
        self.answered_by: set[str] = set()
        self._group: Any = None  # the open file handle inside group()
        if self.path.exists():
            self._load()

    # ---------------------------------------------------------------- reading
    def _load(self) -> None:
        raw = self.path.read_bytes()
        ends_clean = raw.endswith(b"\n") or not raw
        lines = raw.decode("utf-8", errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self._n_lines = len(lines)
        pending_fragment: int | None = None
        for i, line in enumerate(lines, start=1):
            is_last = i == len(lines)
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                if is_last and not ends_clean:
                    self.truncated_line = i
                    warnings.warn(
                        f"{self.path}: line {i} is truncated (a crash while writing). Its release "
                        "never started (the ledger is written before data is touched), so it is "
                        "not counted; the next append marks it repaired.",
                        LedgerWarning,
                        stacklevel=3,
                    )
                    return
                pending_fragment = i
                continue
            if isinstance(data, dict) and set(data) == {_MARKER}:
                if pending_fragment is None or data[_MARKER] != pending_fragment:
                    raise LedgerError(
                        f"{self.path}: line {i}: repair marker names no truncated line."
                    )
                pending_fragment = None
                continue
            if pending_fragment is not None:
                raise LedgerError(
                    f"{self.path}: line {pending_fragment} is not valid JSON. Only a truncated "
                    "last line can be recovered; restore the file from a backup."
                )
            try:
                self._index(Record.from_json(data))
            except LedgerError as exc:
                raise LedgerError(f"{self.path}: line {i}: {exc}") from None
        if pending_fragment is not None:
            raise LedgerError(f"{self.path}: line {pending_fragment} is not valid JSON.")

    def digest(self, count: int | None = None) -> str:
        """Digest of record ``count - 1`` (default: the last); "" for an empty prefix."""
        count = len(self.records) if count is None else count
        return self.records[count - 1].digest() if count > 0 else ""

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def _index(self, record: Record) -> None:
        self.records.append(record)
        self._history[record.client] = extend(
            self._history.get(record.client, ()), flatten(record.event)
        )

    @property
    def clients(self) -> list[str]:
        return sorted(self._history, key=_client_sort_key)

    def events(self, client: str) -> list[Event]:
        return [r.event for r in self.records if r.client == client]

    def history(self, client: str) -> History:
        """The client's releases as merged (q, σ, steps) blocks (what ε depends on)."""
        return self._history.get(str(client), ())

    # ---------------------------------------------------------------- accounting
    # Every ε reported is the smaller of two valid upper bounds (the configured backend's and
    # RDP's), memoised by history, so clients with the same history cost one computation.
    def _bound(self, history: History, delta: float) -> float:
        if not history:
            return 0.0
        bound = best_bound(history, delta, self.accountant)
        self.answered_by.add(bound.backend)
        return bound.epsilon

    def epsilon(self, client: str, *, delta: float) -> float:
        """ε upper bound spent by ``client`` so far, at ``delta``."""
        return self._bound(self.history(client), check_target_delta(delta))

    def epsilons(self, *, delta: float) -> dict[str, float]:
        check_target_delta(delta)
        return {c: self._bound(h, delta) for c, h in sorted(
            self._history.items(), key=lambda kv: _client_sort_key(kv[0]))}  # fmt: skip

    def max_epsilon(self, *, delta: float) -> float:
        """max over clients of their ε, computing the tight bound for as few distinct
        histories as possible: in decreasing order of their RDP bound, stopping once the next
        RDP bound (which caps that history's ε) is no larger than the maximum found."""
        check_target_delta(delta)
        ranked = sorted(
            ((rdp_epsilon(h, delta), h) for h in set(self._history.values())), reverse=True
        )
        best = 0.0
        for rdp, h in ranked:
            if rdp <= best:
                break
            best = max(best, self._bound(h, delta))
        return best

    def risk(self, client: str, *, fprs: Sequence[float] = DEFAULT_FPRS) -> Risk:
        """Upper bounds on membership-inference risk against ``client``'s records so far (TPR at
        each FPR, advantage; :mod:`accounting.risk`), from the ledger's backend, memoised by
        history."""
        return history_risk(self.history(client), backend=self.accountant, fprs=fprs)

    def max_risk(self, *, fprs: Sequence[float] = DEFAULT_FPRS) -> Risk:
        """Per FPR, the largest TPR bound over clients; the largest advantage (each distinct
        history computed once). An empty ledger gives TPR = FPR and advantage 0."""
        risks = [history_risk(h, backend=self.accountant, fprs=fprs)
                 for h in set(self._history.values())] or [history_risk((), fprs=fprs)]  # fmt: skip
        return Risk(
            {a: max(r.tpr_at_fpr[a] for r in risks) for a in risks[0].tpr_at_fpr},
            max(r.advantage for r in risks),
        )

    def check(self, client: str, planned: Event, *, budget: float, delta: float) -> float:
        """An upper bound on the client's ε after ``planned``; raises if it exceeds ``budget``.

        Admits at once when the RDP bound after the release is within budget (a valid upper
        bound: the release provably stays within budget); asks the tight backend only when RDP
        says the release might cross.

        Raises:
            BudgetExceededError: naming the client, current ε, planned ε and budget.
        """
        check_target_delta(delta)
        after = extend(self.history(client), flatten(planned))
        fast = rdp_epsilon(after, delta)
        if fast <= budget:
            return fast
        planned_eps = self._bound(after, delta)
        if planned_eps > budget:
            raise BudgetExceededError(
                client=client,
                current_epsilon=self.epsilon(client, delta=delta),
                planned_epsilon=planned_eps,
                budget=budget,
                delta=delta,
            )
        return planned_eps

    # ---------------------------------------------------------------- writing
    def append(self, record: Record) -> None:
        """Durably append one release (write + flush + fsync) before the caller touches data.

        Inside :meth:`group`, the line is written and flushed (it survives the process dying)
        and the fsync is the group's, at its end."""
        if not isinstance(record, Record):
            raise TypeError(f"`record` must be a Record. Found {type(record).__name__}.")
        line = json.dumps(record.to_json(), sort_keys=False) + "\n"
        if self.truncated_line is not None:
            line = "\n" + json.dumps({_MARKER: self.truncated_line}) + "\n" + line
        if self._group is not None:
            self._group.write(line)
            self._group.flush()
        else:
            with self._open() as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        if self.truncated_line is not None:
            self._n_lines += 1
            self.truncated_line = None
        self._n_lines += 1
        self._index(record)

    def _open(self):
        """The file, opened for appending; a new file's directory entry is made durable."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fh = open(self.path, "a", encoding="utf-8")
        if created:  # the new file's directory entry must survive a crash too
            fsync_directory(self.path.parent)
        return fh

    @contextmanager
    def group(self) -> Iterator[Ledger]:
        """Appends inside share one open file and one fsync, at the end (also on an error).

        For a round of in-process clients: every release is in the file (written and flushed)
        before its data is touched, and durable before the caller lets anything derived from
        the data out of the process (aggregates, metrics, checkpoints). Nested groups join the
        outer one."""
        if self._group is not None:
            yield self
            return
        self._group = self._open()
        try:
            yield self
        finally:
            fh, self._group = self._group, None
            try:
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fh.close()

    def record(self, client: str, round: int, scope: str, event: Event) -> Record:
        rec = Record(client=str(client), round=round, scope=scope, event=event)
        self.append(rec)
        return rec

    def spend(
        self, client: str, round: int, scope: str, event: Event, *, budget: float, delta: float
    ) -> float:
        """Write-ahead spending: check the budget, then append. Returns ε after the release."""
        client = str(client)
        after = self.check(client, event, budget=budget, delta=delta)
        self.record(client, round, scope, event)
        return after


def _client_sort_key(c: str) -> tuple[int, int | str]:
    return (0, int(c)) if c.isdigit() else (1, c)
