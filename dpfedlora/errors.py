"""The one base class of user errors (torch-free).

Every error caused by what the user gave — a config key, a file, a flag, a run directory — is a
:class:`UserError`: the CLI prints it as one line and exits 2. Anything else is an internal
error and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in the user's input: one line naming what, the value found and the fix."""
