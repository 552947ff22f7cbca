"""The ``qldbstream`` command's sub-commands from other distributions (entry points ``qldbstream.commands``).

Contributed commands are listed where the core knows them, a broken one fails with one line when
used (and leaves the others working), one that takes a built-in name is ignored with a warning, and
``demo``/``simulate``/``export`` say which package to install when theirs is missing.
"""

from __future__ import annotations

import argparse
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from qldbstream.cli import command

GROUP = command.ENTRY_POINT_GROUP


def register(sub: Any) -> None:
    """A contributed command (this module is the entry point's value in the tests below)."""
    p = sub.add_parser("hello", help="say hello")
    p.add_argument("--name", default="world")
    p.set_defaults(handler=lambda args: print(f"hello {args.name}") or 0)


def use(monkeypatch: pytest.MonkeyPatch, *eps: tuple[str, str]) -> None:
    found = [EntryPoint(name, value, GROUP) for name, value in eps]
    monkeypatch.setattr(command, "entry_points", lambda group: [e for e in found if group == GROUP])


def commands(parser: argparse.ArgumentParser) -> list[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_the_installed_distributions_contribute_demo_simulate_export_in_help_order() -> None:
    names = commands(command.build_parser())
    assert names[: len(command.ORDER)] == list(command.ORDER), names
    # then, by name, the commands of installed distributions the core does not know
    assert names[len(command.ORDER) :] == sorted(set(names) - set(command.ORDER))
    assert "pg-verify" in names  # qldbstream-handlers: the PostgreSQL migration's re-verification
    assert not set(command.COMMANDS) & set(command.CONTRIBUTED)


def test_a_contributed_command_runs_and_follows_the_known_ones(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, ("hello", __name__))
    assert commands(command.build_parser())[-1] == "hello"
    assert command.main(["hello", "--name", "ledger"]) == 0
    assert capsys.readouterr().out == "hello ledger\n"


def test_a_missing_distribution_names_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch)
    assert command.main(["demo", "--seed", "3", "--output", "x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("qldbstream demo: this command comes with the qldbstream-tools package")
    assert "pip install -e ./tools" in err[0]
    assert command.main(["export", "--to", "x"]) == 2
    assert "qldbstream-handlers" in capsys.readouterr().err
    # the core's own commands still parse their options strictly
    with pytest.raises(SystemExit) as exited:
        command.main(["config", "--no-such-option"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_a_broken_contributed_command_fails_alone_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, ("simulate", "tests.unit.no_such_module"), ("hello", __name__))
    assert command.main(["hello"]) == 0
    capsys.readouterr()
    assert command.main(["simulate", "--seed", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert "cannot load (ModuleNotFoundError: No module named 'tests.unit.no_such_module')" in err[0]
    # --debug shows where it came from, and the exit status stays the same
    assert command.main(["--debug", "simulate"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ModuleNotFoundError" in err and "ConfigurationError" in err


def test_a_contributed_command_never_takes_a_built_in_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, ("run", __name__))
    parser = command.build_parser()
    warning = capsys.readouterr().err
    assert warning.startswith("qldbstream: the command 'run' from an unknown distribution is ignored")
    assert len(warning.splitlines()) == 1
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert action.choices["run"].get_default("handler").__module__ == "qldbstream.cli.run"
