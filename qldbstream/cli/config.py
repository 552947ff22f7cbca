"""``qldbstream config``: the effective configuration, validated, with secrets masked."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any

from qldbstream.app.config import PREFIX, Settings, load_settings
from qldbstream.app.plugins import _resolve

__all__ = ["register", "run"]


def _settings_help() -> str:
    lines = ["settings (environment variable, default):"]
    for f in fields(Settings):
        if f.name == "handler_settings":
            continue
        default = f.default
        shown = "-" if default is None or default == () else getattr(default, "value", default)
        lines.append(f"  {PREFIX}{f.name.upper():34} {shown}")
    lines.append(f"  {PREFIX}HANDLER_<NAME>__<KEY>              a handler's own setting")
    lines.append(f"  {PREFIX}CONFIG                             a TOML or JSON file with the same names")
    lines.append("")
    lines.append("examples:")
    lines.append("  qldbstream config")
    lines.append("  qldbstream config --config qldbstream.toml --json")
    return "\n".join(lines)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "config",
        help="print the effective configuration (validated, secrets masked)",
        description="Read the configuration as a runtime would (file, then environment), validate it and "
        "print it with secrets masked. Exit 2 with one line when it is invalid, a configured handler "
        "included (an unknown plugin name, a module that does not import).",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="configuration file (default: QLDBSTREAM_CONFIG)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(config_file=args.config)
    for spec in settings.handlers:
        # the runtimes' own lookup: an unknown name, a module that does not import or a missing
        # attribute is the one-line ConfigurationError (exit 2) they would refuse to start with; the
        # handler is not created, so nothing connects anywhere
        _resolve(spec)
    masked = settings.masked()
    if args.json:
        json.dump(masked, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    width = max(len(k) for k in masked)
    for key, value in masked.items():
        if key == "handler_settings":
            for handler, kv in value.items():
                for k, v in kv.items():
                    sys.stdout.write(f"{'handler ' + handler + '.' + k:{width}}  {v}\n")
            continue
        shown = getattr(value, "value", value)
        sys.stdout.write(f"{key:{width}}  {shown if shown not in (None, []) else '-'}\n")
    return 0
