"""The ``qldbstream`` command: one entry point, one module per sub-command.

Each module in :mod:`qldbstream.cli` exposes ``register(subparsers)``, which adds its
sub-parser and sets ``handler`` to a function ``(args) -> int``. Errors a user can fix are
printed as one line on stderr; tracebacks are never shown unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qldbstream import __version__
from qldbstream.core.errors import ConfigurationError, InputError, QldbStreamError

__all__ = ["main"]

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS = (
    "demo",
    "run",
    "kcl",
    "verify",
    "inspect",
    "simulate",
    "export",
    "replay-dlq",
    "dr-check",
    "handlers",
    "config",
)

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qldbstream",
        description="Consume, verify and replay Amazon QLDB journal streams from Amazon Kinesis.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'qldbstream COMMAND --help' for the options and examples of each command.",
    )
    parser.add_argument("--version", action="version", version=f"qldbstream {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"qldbstream.cli.{name.replace('-', '_')}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_OK
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("qldbstream: interrupted", file=sys.stderr)
        return 130
    except (InputError, ConfigurationError) as exc:
        if args.debug:
            raise
        print(f"qldbstream {args.command}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except QldbStreamError as exc:
        if args.debug:
            raise
        print(f"qldbstream {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
