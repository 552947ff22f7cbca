"""``qldbstream simulate``: a deterministic QLDB ledger and its journal stream, for tests and demos."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

from qldbstream.core.errors import ConfigurationError, InputError

__all__ = ["register", "run"]

#: Records handed to PutRecords between two progress updates.
_PUT_CHUNK = 2000

EXAMPLES = """\
The simulator runs a small bank (Customers, Accounts, Transactions) on a simulated QLDB ledger
and writes the journal stream exactly as QLDB writes it to Kinesis: Ion binary records, KPL
aggregates (one per block), every hash (revision, statement digest, entries, block chain).
Same seed and options, same bytes.

tamper SPEC (repeatable; applied after hashing, so a verifier must catch it):
  TARGET[+rehash|+rehash-block]:FIELD[=ION]
  TARGET   block=SEQ | revision#N (N-th REVISION_DETAILS, 0-based) | revision=DOCID@VERSION
           | TABLE#N (N-th revision of Customers/Accounts/Transactions that shows its data)
           | kpl=SEQ (the KPL aggregate of block SEQ; FIELD md5)
  FIELD    revision: data.<path>, dataHash, metadata.{id,version,txTime,txId}, hash,
           blockAddress.sequenceNo, tableInfo.tableName
           block: blockHash, previousBlockHash, entriesHash, entriesHashList[K],
           transactionInfo.statements[I].{statement,statementDigest,startTime},
           transactionInfo.documents.<docId>.statements[J], redactionInfo.<path>,
           revisionSummaries[I].{hash,documentId}, transactionId, blockTimestamp
  =ION     the new value as Ion text (default: a type-preserving change, e.g. +1, one bit)
  +rehash  the forger recomputes the revision hash and its summary entry (V4 fails instead)
  +rehash-block  ... and entriesHashList, entriesHash, blockHash (only V9 of the next block fails)
  --expected FILE.json lists, per tamper, exactly which checks (V1-V9) must fail for which record.

examples:
  qldbstream simulate --seed 7 --transactions 500 --output events.jsonl
  qldbstream simulate --transactions 10000 --shards 4 --duplicates 0.02 --reorder 5 -o - | head
  qldbstream simulate --no-aggregate --tamper 'Transactions#12:data.amount' \\
      --tamper 'block=40:transactionInfo.statements[0].statement' --expected expected.json -o events.jsonl
  qldbstream simulate --delete 20 --redact 5 --mix card_payment=60,small_burst=8 -o events.jsonl
  qldbstream simulate --stream simbank --endpoint-url http://127.0.0.1:4567 --create-stream --shards 2
  qldbstream simulate --export ./bucket --export-format ION_BINARY --tamper 'Transactions#3:data.amount' \
      --expected expected.json && qldbstream verify ./bucket
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a QLDB ledger and write its journal stream (JSONL Lambda events or Kinesis)",
        description="Simulate a bank's QLDB ledger and its journal stream to Kinesis, deterministically.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w = p.add_argument_group("ledger")
    w.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    w.add_argument(
        "--transactions", type=int, default=100, metavar="N", help="bank transactions (default 100)"
    )
    w.add_argument("--delete", type=int, metavar="N", help="exactly N deletes (default: from the mix)")
    w.add_argument("--redact", type=int, metavar="N", help="exactly N redactions (default: from the mix)")
    w.add_argument(
        "--redact-revision",
        action="append",
        default=[],
        metavar="DOCID@VERSION",
        help="also redact this revision after the workload (repeatable)",
    )
    w.add_argument(
        "--mix",
        metavar="KIND=WEIGHT,...",
        help="transaction weights: open_account, card_payment, deposit, transfer, small_burst, "
        "high_value, customer_update, account_review, delete, redaction",
    )
    w.add_argument("--start-time", metavar="ISO", help="first statement time (default 2024-03-01T09:00:00Z)")
    w.add_argument("--no-ddl", action="store_true", help="start without the CREATE TABLE blocks")
    w.add_argument(
        "--live", action="store_true", help="show redacted revisions with data (a live, not replayed, stream)"
    )
    d = p.add_argument_group("delivery")
    d.add_argument("--shards", type=int, default=1, metavar="N", help="Kinesis shards (default 1)")
    agg = d.add_mutually_exclusive_group()
    agg.add_argument(
        "--aggregate", dest="aggregate", action="store_true", default=True, help="KPL aggregates (default)"
    )
    agg.add_argument(
        "--no-aggregate", dest="aggregate", action="store_false", help="one Kinesis record per journal record"
    )
    d.add_argument(
        "--duplicates", type=float, default=0.0, metavar="RATE", help="share delivered twice (0-1)"
    )
    d.add_argument(
        "--reorder", type=int, default=0, metavar="WINDOW", help="reordering window, in Kinesis records"
    )
    d.add_argument("--no-completed", action="store_true", help="no CONTROL COMPLETED at the end")
    d.add_argument(
        "--tamper", action="append", default=[], metavar="SPEC", help="tamper with a record (see below)"
    )
    o = p.add_argument_group("output (one of --output, --stream or --export)")
    o.add_argument(
        "-o", "--output", metavar="FILE.jsonl", help="JSON Lines of Lambda Kinesis events ('-': stdout)"
    )
    o.add_argument(
        "--batch-size", type=int, default=100, metavar="N", help="records per Lambda event (default 100)"
    )
    o.add_argument("--stream", metavar="NAME", help="PutRecords into this Kinesis stream")
    o.add_argument("--endpoint-url", metavar="URL", help="Kinesis endpoint (default: AWS for the region)")
    o.add_argument(
        "--region",
        metavar="REGION",
        help="AWS region (default: AWS_REGION, else AWS_DEFAULT_REGION, else eu-west-1)",
    )
    o.add_argument("--create-stream", action="store_true", help="create the stream (--shards shards) first")
    o.add_argument(
        "--export",
        metavar="DIR",
        help="write the journal as ExportJournalToS3 does (manifests + data objects; DIR is the bucket)",
    )
    o.add_argument(
        "--export-format",
        choices=("ION_TEXT", "ION_BINARY", "JSON"),
        default="ION_TEXT",
        help="the export's outputFormat (default ION_TEXT)",
    )
    o.add_argument(
        "--export-blocks-per-object",
        type=int,
        default=100,
        metavar="N",
        help="journal blocks per data object (default 100)",
    )
    o.add_argument("--expected", metavar="FILE.json", help="write the expected verdicts (checks V1-V9) here")
    o.add_argument("--ledger", metavar="FILE.json", help="write the ledger's ground truth here")
    p.set_defaults(handler=run)


def _mix(text: str | None) -> Any:
    from qldbstream_tools.simulate import WorkloadMix

    if not text:
        return WorkloadMix()
    values: dict[str, float] = {}
    names = set(WorkloadMix.__dataclass_fields__)
    for part in text.split(","):
        name, eq, weight = part.partition("=")
        name = name.strip()
        if not eq or name not in names:
            raise ConfigurationError(
                f"--mix {text!r}: expected KIND=WEIGHT with KIND one of {', '.join(sorted(names))}"
            )
        try:
            values[name] = float(weight)
        except ValueError:
            raise ConfigurationError(f"--mix {text!r}: {weight!r} is not a number") from None
    return replace(WorkloadMix(), **values)


def _revision(text: str) -> tuple[str, int]:
    doc, at, version = text.partition("@")
    if not at or not doc or not version.isdigit():
        raise ConfigurationError(f"--redact-revision {text!r}: expected DOCUMENT_ID@VERSION")
    return doc, int(version)


def _start(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(f"--start-time {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ConfigurationError(f"--start-time {text!r} needs a time zone (e.g. Z)")
    return moment


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`~qldbstream_tools.simulate.SimulationConfig` the arguments describe."""
    from qldbstream_tools.simulate import (
        DeliveryOptions,
        EventSource,
        SimulationConfig,
        Workload,
        parse_tamper,
    )

    workload = Workload(
        transactions=args.transactions,
        mix=_mix(args.mix),
        deletes=args.delete,
        redactions=args.redact,
        redact=tuple(_revision(r) for r in args.redact_revision),
        ddl=not args.no_ddl,
    )
    start = _start(args.start_time)
    if start is not None:
        workload = replace(workload, start_time=start)
    delivery = DeliveryOptions(
        aggregate=args.aggregate,
        shards=args.shards,
        duplicate_rate=args.duplicates,
        reorder_window=args.reorder,
        completed=not args.no_completed,
    )
    source = EventSource(region=_region(args.region), stream_name=args.stream or EventSource().stream_name)
    return SimulationConfig(
        seed=args.seed,
        workload=workload,
        delivery=delivery,
        tampers=tuple(parse_tamper(t) for t in args.tamper),
        source=source,
        replayed=not args.live,
    )


def _write_json(path: str, doc: Any) -> None:
    try:
        Path(path).write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write {path} ({exc.strerror})") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def run(args: argparse.Namespace) -> int:
    if sum(x is not None for x in (args.output, args.stream, args.export)) != 1:
        raise ConfigurationError(
            "give either --output FILE.jsonl ('-' for stdout), --stream NAME or --export DIR"
        )
    if args.stream is None and (args.create_stream or args.endpoint_url):
        raise ConfigurationError("--create-stream and --endpoint-url go with --stream NAME")
    try:
        Decimal(args.duplicates)
    except InvalidOperation:  # pragma: no cover - argparse already made it a float
        raise ConfigurationError("--duplicates must be a number") from None
    from qldbstream_tools.simulate import simulate

    with _Ticker(f"simulating {args.transactions} transactions") as ticker:
        sim = simulate(build_config(args))
        ticker.say(f"writing {len(sim.deliveries)} Kinesis records")
        if args.output is not None:
            opened: Any = nullcontext(sys.stdout) if args.output == "-" else _open(args.output)
            with opened as out:
                events = sim.write_jsonl(out, batch_size=args.batch_size)
            where = f"{events} Lambda events to {'stdout' if args.output == '-' else args.output}"
        elif args.export is not None:
            from qldbstream_tools.simulate.export import write_export

            files = write_export(
                sim,
                args.export,
                output_format=args.export_format,
                blocks_per_object=args.export_blocks_per_object,
            )
            where = (
                f"journal export {files.export_id} ({args.export_format}, "
                f"{len(files.object_keys)} data objects) to {args.export}/{files.prefix}"
            )
        else:
            where = _put(sim, args, ticker)
    if args.expected:
        _write_json(args.expected, sim.expected.to_json())
    if args.ledger:
        _write_json(args.ledger, sim.ledger.to_json())
    s = sim.summary()
    sys.stderr.write(
        f"simulated {s['blocks']} blocks, {s['revisions']} revisions ({s['deletes']} deletes, "
        f"{s['redactions']} redactions), {s['kinesisRecords']} Kinesis records "
        f"({s['duplicates']} duplicates) on {s['shards']} shard(s); "
        f"{s['expectedFailures']} expected check failures; wrote {where}\n"
    )
    return 0


def _open(path: str) -> IO[str]:
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path} ({exc.strerror})") from None


def _region(flag: str | None) -> str:
    """``--region``, else the environment boto3 reads, else eu-west-1 (the simulated stream's ARN)."""
    return flag or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "eu-west-1"


class _Ticker:
    """On a terminal's stderr, one line that says what the simulator is doing and for how long,
    redrawn every half second; nothing when stderr is not a terminal (pipes, logs, tests)."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def say(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> _Ticker:
        if sys.stderr.isatty():
            self._thread = threading.Thread(target=self._run, name="simulate-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            elapsed = time.monotonic() - self._started
            sys.stderr.write(f"\r\033[Kqldbstream simulate: {self._what} ... {elapsed:.0f} s")
            sys.stderr.flush()


def _put(sim: Any, args: argparse.Namespace, ticker: _Ticker | None = None) -> str:
    """PutRecords every delivery; an AWS error (no region or credentials, an endpoint that does not
    answer, throttling after retries) is left to the command's one line and exit status."""
    from qldbstream.io.clients import aws_client
    from qldbstream.io.kinesis_writer import create_stream
    from qldbstream_tools.simulate.output import put_to_stream

    client = aws_client("kinesis", endpoint_url=args.endpoint_url, region_name=_region(args.region))
    if args.create_stream:
        create_stream(client, args.stream, args.shards, exist_ok=True)
    deliveries, results = sim.deliveries, []
    for start in range(0, len(deliveries), _PUT_CHUNK):  # in order: the same calls, with progress
        if ticker is not None:
            ticker.say(f"PutRecords to {args.stream}: {start}/{len(deliveries)} records")
        results.extend(put_to_stream(client, args.stream, deliveries[start : start + _PUT_CHUNK]))
    shards = len({r.shard_id for r in results})
    return f"{len(results)} records to stream {args.stream} ({shards} shard(s) received records)"
