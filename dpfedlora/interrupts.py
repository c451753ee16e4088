"""Stop a run at a safe point on Ctrl-C (SIGINT) or SIGTERM.

The first signal only sets a flag: the round loop checks it between clients, so no client is
cut off half-way through a step and the last checkpoint stays the resume point. A second signal
raises ``KeyboardInterrupt`` at once (for a user who really wants out); the CLI turns that into
one line too. Outside the main thread (where Python cannot install handlers) nothing changes.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["StopRequest"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: ``requested`` becomes the signal's name once one arrives."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
