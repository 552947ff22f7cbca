"""The ``qldbstream`` command: one entry point, one module per sub-command.

Each module in :mod:`qldbstream.cli` exposes ``register(subparsers)``, which adds its
sub-parser and sets ``handler`` to a function ``(args) -> int``. Errors a user can fix are
printed as one line on stderr; tracebacks are never shown unless ``--debug`` is given.

Other distributions add sub-commands through the entry-point group ``qldbstream.commands``: the
entry point's name is the command, its value a module with the same ``register(subparsers)``
(``qldbstream-tools`` adds ``demo`` and ``simulate``, ``qldbstream-handlers`` adds ``export``). They
are listed in :data:`ORDER` where the core knows them, then by name. A contributed command that
cannot load does not break the others: using it prints one line saying why. One that takes a
built-in name is ignored, with a one-line warning. The commands of :data:`CONTRIBUTED` parse
without their distribution too, and then say which package to install.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NoReturn

from qldbstream import __version__
from qldbstream.core.errors import ConfigurationError, InputError, QldbStreamError

__all__ = ["COMMANDS", "CONTRIBUTED", "ENTRY_POINT_GROUP", "ORDER", "build_parser", "main"]

#: This package's sub-command modules (``qldbstream.cli.<name>``).
COMMANDS = ("run", "kcl", "verify", "inspect", "replay-dlq", "dr-check", "handlers", "config")

#: The entry-point group other distributions add sub-commands through.
ENTRY_POINT_GROUP = "qldbstream.commands"

#: Commands the documentation promises that live in another distribution: the one to install.
CONTRIBUTED = {
    "demo": "qldbstream-tools",
    "simulate": "qldbstream-tools",
    "export": "qldbstream-handlers",
    "pg-verify": "qldbstream-handlers",
}

#: The order ``--help`` lists the commands in; other contributed commands follow, by name.
ORDER = (
    "demo",
    "run",
    "kcl",
    "verify",
    "inspect",
    "simulate",
    "export",
    "pg-verify",
    "replay-dlq",
    "dr-check",
    "handlers",
    "config",
)

#: Where each contributed distribution lives in this repository (for the install hint).
_CHECKOUT = {"qldbstream-tools": "./tools", "qldbstream-handlers": "./handlers"}

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
    contributed = _contributed()
    rank = {name: i for i, name in enumerate(ORDER)}
    for name in sorted(
        set(COMMANDS) | set(contributed) | set(CONTRIBUTED), key=lambda n: (rank.get(n, len(ORDER)), n)
    ):
        if name in COMMANDS:
            importlib.import_module(f"qldbstream.cli.{name.replace('-', '_')}").register(sub)
        elif name in contributed:
            _register_contributed(sub, contributed[name])
        else:
            _register_missing(sub, name, CONTRIBUTED[name])
    return parser


def _contributed() -> dict[str, EntryPoint]:
    """The ``qldbstream.commands`` entry points by name: the first by distribution name wins a tie,
    a built-in name is never taken (each with a one-line warning on stderr)."""
    found: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, _distribution(e))):
        if ep.name in COMMANDS:
            _warn(f"the command {ep.name!r} from {_distribution(ep)} is ignored: it is a built-in command")
        elif ep.name in found:
            _warn(
                f"the command {ep.name!r} from {_distribution(ep)} is ignored: "
                f"{_distribution(found[ep.name])} provides it too"
            )
        else:
            found[ep.name] = ep
    return found


def _register_contributed(sub: Any, ep: EntryPoint) -> None:
    """Add a contributed command; if it cannot load, a stand-in that says why (one line)."""
    try:
        module = ep.load()
        module.register(sub)
    except Exception as exc:  # a broken plugin must not take the whole command down
        what = f"{type(exc).__name__}: {exc}".splitlines()[0]
        message = (
            f"the command from {_distribution(ep)} ({ep.value}) cannot load ({what}); reinstall that "
            "package or uninstall it"
        )
        _stand_in(sub, ep.name, f"unavailable: {what}", message, exc)


def _register_missing(sub: Any, name: str, distribution: str) -> None:
    """A documented command whose distribution is not installed: it says which package to install."""
    message = (
        f"this command comes with the {distribution} package, which is not installed: pip install "
        f"{distribution} (in a qldbstream checkout: pip install -e {_CHECKOUT[distribution]})"
    )
    _stand_in(sub, name, f"(needs {distribution}, not installed)", message, None)


def _stand_in(sub: Any, name: str, help_text: str, message: str, cause: BaseException | None) -> None:
    """``name`` as a command that accepts any arguments and fails with ``message`` (exit status 2)."""

    def fail(args: argparse.Namespace) -> NoReturn:
        raise ConfigurationError(message) from cause

    handler: Callable[[argparse.Namespace], NoReturn] = fail
    parser = sub.choices.get(name)  # a plugin that failed half-way through its register()
    if parser is None:
        parser = sub.add_parser(name, help=help_text, description=message)
    parser.set_defaults(handler=handler, accepts_any_arguments=True)


def _distribution(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def _warn(text: str) -> None:
    print(f"qldbstream: {text}", file=sys.stderr)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parse_args``, except that a stand-in command takes any arguments (it only explains itself)."""
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
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
