"""The ``dpfedlora`` command line.

Verbs are registered in ``VERBS`` (name -> module). Each verb module defines
``add_parser(subparsers)`` and must not import torch at module level, so building the parser
(and ``--help``) stays fast; training verbs import torch inside their handler.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from accounting import LedgerError

from ..errors import UserError

__all__ = ["main", "VERBS", "CLIError", "OneLineParser", "add_overrides"]

VERBS: dict[str, str] = {
    "epsilon": "dpfedlora.cli.account",
    "calibrate": "dpfedlora.cli.account",
    "ledger": "dpfedlora.cli.account",
    "run": "dpfedlora.cli.run",
    "audit": "dpfedlora.cli.audit",
    "sweep": "dpfedlora.cli.sweep",
    "report": "dpfedlora.cli.sweep",
    "tune": "dpfedlora.cli.sweep",
    "export": "dpfedlora.cli.export",
    "evaluate": "dpfedlora.cli.export",
    "plan": "dpfedlora.cli.plan",
    "deploy": "dpfedlora.cli.deploy",
}


class CLIError(UserError):
    """A user error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag and the value, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_overrides(parser: argparse.ArgumentParser, example: str = "method.name=fedsb") -> None:
    """The ``--set KEY=VALUE`` option every config-reading verb takes (repeatable)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dpfedlora",
        description="Differentially private federated fine-tuning with LoRA-family adapters.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
    sub.required = True
    for module in dict.fromkeys(VERBS.values()):
        importlib.import_module(module).add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verb = getattr(args, "verb", "")
    try:
        return int(args.handler(args) or 0)
    except (UserError, LedgerError) as exc:
        # one line: the key or file, the value found, the fix (never a traceback)
        message = " ".join(str(exc).split())
        print(f"dpfedlora {verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"dpfedlora {verb}: interrupted. A run continues with --resume; every release "
            "recorded in its ledger stays counted.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
