"""``qldbstream handlers``: installed handler plugins, and which ones the configuration activates."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qldbstream.app.config import load_settings
from qldbstream.app.plugins import installed_plugins, load_handlers

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  qldbstream handlers
  QLDBSTREAM_HANDLERS=audit qldbstream handlers --check   also load the active ones (checks their settings)
  qldbstream handlers --config qldbstream.toml --json
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "handlers",
        help="list installed handler plugins and the active ones",
        description="List the handler plugins installed (entry-point group qldbstream.handlers) and "
        "which ones the configuration activates.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="configuration file (default: QLDBSTREAM_CONFIG)")
    p.add_argument("--check", action="store_true", help="load the active handlers to validate their settings")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(config_file=args.config)
    active = set(settings.handlers)
    installed = installed_plugins()
    rows = [
        {"name": p.name, "target": p.target, "distribution": p.distribution, "active": p.name in active}
        for p in installed
    ]
    for spec in settings.handlers:
        if spec not in {p.name for p in installed}:
            rows.append({"name": spec, "target": spec, "distribution": None, "active": True})
    if args.check:
        for handler in load_handlers(settings.handlers, settings.handler_settings):
            for row in rows:
                if row["active"] and handler.name in (row["name"], str(row["target"]).split(":")[-1]):
                    row["loaded"] = type(handler).__name__
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from qldbstream.extras import require

    require("rich", "qldbstream handlers (without --json)")
    from rich.console import Console
    from rich.table import Table

    table = Table(title="qldbstream handler plugins", title_justify="left")
    for col in ("name", "target", "distribution", "active"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            str(row["name"]),
            str(row["target"]),
            str(row["distribution"] or "-"),
            "yes" if row["active"] else "no",
        )
    Console().print(table)
    if not active:
        Console().print("No handler is active: set QLDBSTREAM_HANDLERS (names or module:attribute paths).")
    return 0
