"""The ``qldbstream`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from qldbstream import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qldbstream", description=__doc__)
    parser.add_argument("--version", action="version", version=f"qldbstream {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0
