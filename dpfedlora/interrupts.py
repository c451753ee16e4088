"""Stop a run at a safe point on Ctrl-C (SIGINT) or SIGTERM, or pause it after a round (SIGUSR1).

The first SIGINT/SIGTERM only sets a flag: the round loop checks it between clients, so no
client is cut off half-way through a step and the last checkpoint stays the resume point. A
second signal raises ``KeyboardInterrupt`` at once (for a user who really wants out); the CLI
turns that into one line too. Outside the main thread (where Python cannot install handlers)
nothing changes.

Stopping inside a round abandons it, and the spend its clients recorded before training stays
counted. SIGUSR1 asks for the gentler stop: finish the round in progress, checkpoint, then stop,
so nothing spent is lost and ``--resume`` continues with the next round.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["StopRequest"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PAUSE = getattr(signal, "SIGUSR1", None)  # not on Windows


class StopRequest:
    """Context manager: ``requested`` becomes the signal's name once SIGINT or SIGTERM arrives;
    ``pause`` becomes true once SIGUSR1 does."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.pause = False
        self._previous: dict[int, object] = {}

    def _handle_pause(self, signum: int, frame: FrameType | None) -> None:
        self.pause = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            if _PAUSE is not None:
                self._previous[_PAUSE] = signal.signal(_PAUSE, self._handle_pause)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
