"""``qldbstream kcl``: run the KCL MultiLangDaemon with qldbstream's record processor (the KCL worker)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qldbstream.cli.common import add_stream_options, environ_with_flags
from qldbstream.core.errors import ConfigurationError, InputError

__all__ = ["main", "register", "run"]

log = logging.getLogger("qldbstream.kcl")

EXAMPLES = """\
The KCL MultiLangDaemon (Java) owns the shard leases (a DynamoDB table named after application_name),
reads the stream and starts one `python -m qldbstream.kcl` record processor per leased shard. Run as
many workers as you like with the same settings: the KCL spreads the shards over them.

examples:
  qldbstream kcl --config worker.toml
  qldbstream kcl --stream my-ledger-stream --region eu-west-1 --metrics-level SUMMARY
  qldbstream kcl --print-properties --stream s --region us-east-1
  qldbstream kcl --stream s --region us-east-1 --endpoint-url http://127.0.0.1:4568 --set maxRecords=100

settings used: stream_name, region, application_name (the lease table), kinesis_endpoint_url /
dynamodb_endpoint_url / endpoint_url, start_position / start_time, batch_max (maxRecords); every
other setting is read by the record processors (handlers, DLQ, de-duplication store, retries).
Use dedupe_store = dynamodb:<table> so that the workers share what has been done.

needs: Java 17 and the daemon's jars (`make kcl` or deploy/kcl/install.sh; or --jar-dir / KCL_JAR_DIR).
signals: SIGTERM/SIGINT are forwarded to the daemon (processors checkpoint, then it exits); a second
one kills it. exit status: 0 stopped, 2 bad configuration or no Java/jars, else the daemon's status.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "kcl",
        help="run the KCL MultiLangDaemon with qldbstream's record processor (the KCL worker)",
        description="Render the KCL MultiLangDaemon's properties from the qldbstream settings and run "
        "it; each leased shard gets a qldbstream record processor that checkpoints after every batch.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_stream_options(p)
    p.add_argument("--worker-id", metavar="ID", help="the lease owner name (default: host name + random)")
    p.add_argument(
        "--metrics-level",
        default="NONE",
        choices=("NONE", "SUMMARY", "DETAILED"),
        type=str.upper,
        help="the KCL's own CloudWatch metrics (default NONE; others need cloudwatch:PutMetricData)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set or override one daemon property (repeatable), e.g. failoverTimeMillis=20000",
    )
    p.add_argument("--print-properties", action="store_true", help="print the properties and exit")
    p.add_argument("--properties-file", metavar="PATH", help="write the properties here (kept) and run")
    p.add_argument("--java", metavar="PATH", help="the java executable (default: $JAVA_HOME/bin/java, PATH)")
    p.add_argument("--jar-dir", metavar="DIR", help="the daemon's jars (default: $KCL_JAR_DIR, amazon-kclpy)")
    p.add_argument(
        "--jvm-option", action="append", default=[], metavar="OPT", help="a JVM option, e.g. -Xmx512m"
    )
    p.set_defaults(handler=run)


def _environ(args: argparse.Namespace) -> dict[str, str]:
    """This process's environment with the flags' settings: the daemon and its processors inherit it."""
    env = environ_with_flags(args)
    if args.config:
        path = Path(args.config).resolve()
        if not path.is_file():
            raise InputError(f"--config {args.config}: no such file")
        env["QLDBSTREAM_CONFIG"] = str(path)
    return env


def _overrides(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigurationError(f"--set {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def run(args: argparse.Namespace) -> int:
    from qldbstream.app.config import load_settings
    from qldbstream.runtimes.kcl_daemon import (
        DaemonOptions,
        kcl_properties,
        prometheus_endpoint,
        render_properties,
        run_daemon,
    )

    env = _environ(args)
    settings = load_settings(env)
    options = DaemonOptions(
        worker_id=args.worker_id, metrics_level=args.metrics_level, overrides=_overrides(args.overrides)
    )
    props = kcl_properties(settings, options)
    if args.print_properties:
        sys.stdout.write(render_properties(props))
        return 0
    _check_app(env)
    with prometheus_endpoint(settings.metrics, env):
        return run_daemon(
            props,
            java=args.java,
            jar_dir=args.jar_dir,
            jvm_options=args.jvm_option,
            env=env,
            properties_file=args.properties_file,
        )


def _check_app(env: dict[str, str]) -> None:
    """Fail here, not in every shard's processor: build the app once (handlers, DLQ, store), then close it."""
    from qldbstream.app.assembly import App

    app = App.from_env(env)
    try:
        if app.settings.dedupe_store == "memory":
            sys.stderr.write(
                "qldbstream kcl: warning: dedupe_store is 'memory': each shard's processor remembers only "
                "its own work, so after a lease moves the new owner may deliver records again; use "
                "dynamodb:<table> to share it between workers\n"
            )
    finally:
        app.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qldbstream.cli.kcl ARGS`` is ``qldbstream kcl ARGS`` (errors as one line)."""
    from qldbstream.core.errors import QldbStreamError

    parser = argparse.ArgumentParser(prog="qldbstream")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["kcl", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except (InputError, ConfigurationError) as exc:
        sys.stderr.write(f"qldbstream kcl: {exc}\n")
        return 2
    except QldbStreamError as exc:
        sys.stderr.write(f"qldbstream kcl: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
