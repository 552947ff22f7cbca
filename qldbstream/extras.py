"""The optional dependencies behind extras, imported where they are used - never at start-up.

``rich`` (extra ``cli``) draws the command's tables and progress; ``prometheus-client`` (extra
``prometheus``) serves ``/metrics``. A Lambda function needs neither, so the base install (and
the zip ``deploy/lambda/build-zip.sh`` builds) carries neither. Without one, :func:`require` raises a
:class:`~qldbstream.core.errors.ConfigurationError` whose one line names the extra to install.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from qldbstream.core.errors import ConfigurationError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["EXTRAS", "require", "stderr_console"]

#: top-level module -> (its distribution, the qldbstream extra that installs it)
EXTRAS = {
    "rich": ("rich", "cli"),
    "prometheus_client": ("prometheus-client", "prometheus"),
}


def require(module: str, needed_for: str) -> ModuleType:
    """Import ``module`` (of a package in :data:`EXTRAS`), or say which extra ``needed_for`` lacks."""
    top = module.split(".", maxsplit=1)[0]
    distribution, extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name not in (top, module):
            raise  # the package is there but broken: its own error says more
        raise ConfigurationError(
            f"{needed_for} needs {distribution}, which is not installed: pip install 'qldbstream[{extra}]'"
        ) from None


def stderr_console(needed_for: str) -> Console | None:
    """A rich console on stderr when stderr is a terminal to draw on, else ``None``.

    Without rich, ``None`` too when stderr is no terminal (a worker's log, a pipe: nothing would be
    drawn); on a terminal the one-line error of :func:`require`.
    """
    try:
        require("rich", needed_for)
    except ConfigurationError:
        if sys.stderr.isatty():
            raise
        return None
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal else None
