"""The ``qldbstream`` command: ``main`` in :mod:`qldbstream.cli.command`, one module per sub-command."""

from qldbstream.cli.command import main

__all__ = ["main"]
