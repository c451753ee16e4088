"""The federation: set-up (:mod:`.setup`, shared by runs, audits and exports), privacy planning
(:mod:`.planning`), the server loop (:mod:`.server`), its checkpointed state (:mod:`.state`),
the run directory (:mod:`.rundir`), resume checks (:mod:`.resume`) and the summary."""

from __future__ import annotations

from .server import Federation, LocalClients, RunError, run
from .setup import Setup, build_setup

__all__ = ["Federation", "LocalClients", "RunError", "Setup", "build_setup", "run"]
