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
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NoReturn

from qldbstream import __version__
from qldbstream.core.errors import ConfigurationError, InputError, QldbStreamError

__all__ = ["COMMANDS", "CONTRIBUTED", "ENTRY_POINT_GROUP", "ORDER", "build_parser", "main"]

#: This package's sub-command modules (``qldbstream.cli.<name>``).
COMMANDS = ("run", "kcl", "verify", "inspect", "replay-dlq", "dr-check", "handlers", "config", "local")

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
    "local",
)

#: Where each contributed distribution lives in this repository (for the install hint).
_CHECKOUT = {"qldbstream-tools": "./tools", "qldbstream-handlers": "./handlers"}

#: Exit statuses: done; a check or an AWS call failed; bad input or configuration (one line says which);
#: Ctrl-C; stdout closed by its reader (``| head``), as a process killed by SIGPIPE reports.
EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141


def version_line() -> str:
    """``qldbstream X (compiled hot path: qldbstream-native Y)`` or ``(pure Python: ...)``."""
    from importlib.metadata import PackageNotFoundError, version

    from qldbstream.core import native

    try:
        native_version = version("qldbstream-native")
    except PackageNotFoundError:
        return f"qldbstream {__version__} (pure Python: qldbstream-native not installed)"
    if native.available():
        return f"qldbstream {__version__} (compiled hot path: qldbstream-native {native_version})"
    return (
        f"qldbstream {__version__} (pure Python: qldbstream-native {native_version} is installed but does "
        "not load or lacks functions this version uses - reinstall it: pip install 'qldbstream[native]')"
    )


class _Version(argparse.Action):
    """``--version``: computed when asked for (it imports the stages), not at every start."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        sys.stdout.write(version_line() + "\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qldbstream",
        description="Consume, verify and replay Amazon QLDB journal streams from Amazon Kinesis.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'qldbstream COMMAND --help' for the options and examples of each command.",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show the version and which hot path runs, and exit"
    )
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
    """Run one command and return its exit status (see :data:`EXIT_OK` and the docs' *Exit status*).

    Every failure is one line on stderr and a status that does not depend on ``--debug``: with
    ``--debug`` the traceback is printed as well, the status stays the same. A closed stdout (``| head``)
    ends the command quietly with :data:`EXIT_PIPE`.
    """
    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_OK
    try:
        status = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here rather than at interpreter exit
        return status
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print("qldbstream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        status, message = _failure(exc)
        if args.debug:
            traceback.print_exc()
        print(f"qldbstream {args.command}: {message}", file=sys.stderr)
        if message.startswith("unexpected error") and not args.debug:
            print(
                f"qldbstream {args.command}: 'qldbstream --debug {args.command} ...' shows the traceback",
                file=sys.stderr,
            )
        return status


def _closed_pipe() -> int:
    """The reader of stdout went away: no traceback, and nothing more written to the closed pipe
    (stdout now points at ``/dev/null``, so the flush at interpreter exit cannot fail either)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (tests): nothing to redirect
        pass
    return EXIT_PIPE


def _failure(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one line for an exception that ended a command."""
    aws = _aws_error(exc)
    if aws is not None:
        return aws
    if isinstance(exc, InputError | ConfigurationError):
        return EXIT_INPUT, str(exc)
    if isinstance(exc, QldbStreamError):
        return EXIT_FAILED, str(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return EXIT_FAILED, f"unexpected error: {type(exc).__name__}" + (f": {first}" if first else "")


def _aws_error(exc: BaseException) -> tuple[int, str] | None:
    """A botocore error, raised as is or as the cause of a command's own error, as one line.

    No region and no credentials are configuration (exit 2), as is a stream or table that does not
    exist; an unreachable endpoint and any other AWS error (throttling after botocore's retries
    included) are a failed run (exit 1).
    """
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return None
    setup = (
        bx.NoRegionError,
        bx.NoCredentialsError,
        bx.PartialCredentialsError,
        bx.EndpointConnectionError,
        bx.ConnectTimeoutError,
    )
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, bx.BotoCoreError | bx.ClientError):
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    if seen is None:
        return None
    if seen is not exc and isinstance(exc, QldbStreamError) and not isinstance(seen, setup):
        return None  # the command already said what its AWS call was for: keep its line and status
    if isinstance(seen, bx.NoRegionError):
        return EXIT_INPUT, (
            "no AWS region: give --region or set AWS_REGION (or AWS_DEFAULT_REGION); with a local "
            "--endpoint-url any region will do, e.g. us-east-1"
        )
    if isinstance(seen, bx.NoCredentialsError | bx.PartialCredentialsError):
        return EXIT_INPUT, (
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE; with a "
            "local --endpoint-url any values will do (see 'qldbstream local')"
        )
    if isinstance(seen, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        url = getattr(seen, "kwargs", {}).get("endpoint_url", "the endpoint")
        return EXIT_FAILED, (
            f"cannot reach {url}: nothing answers there; start a local Kinesis with 'qldbstream local' "
            "or check --endpoint-url / --region"
        )
    if isinstance(seen, bx.ClientError):
        error = seen.response.get("Error", {})
        code = str(error.get("Code", "")) or "error"
        text = str(error.get("Message", "")) or str(seen)
        operation = getattr(seen, "operation_name", "") or "an AWS call"
        if code in (
            "ResourceNotFoundException",
            "NoSuchBucket",
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
        ):
            return EXIT_INPUT, f"{operation}: {code}: {text} (create it, or check the name and region)"
        if "Throttl" in code or code in (
            "ProvisionedThroughputExceededException",
            "LimitExceededException",
            "RequestLimitExceeded",
            "SlowDown",
        ):
            return EXIT_FAILED, (f"{operation}: {code} after botocore's retries: {text} (run again later)")
        return EXIT_FAILED, f"{operation} failed: {code}: {text}"
    return EXIT_FAILED, f"an AWS call failed: {seen}"
