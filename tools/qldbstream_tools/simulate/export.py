"""The simulated ledger's journal as ``ExportJournalToS3`` writes it: manifests and data objects.

Layout (qldb-stream-format.md §9; the reader is :mod:`qldbstream.io.journal_export`)::

    <prefix>/<exportId>.started.manifest                    the request, outputFormat included
    <prefix>/<exportId>.<strandId>.completed.manifest       {keys: [<data object keys>, ...]} in order
    <prefix>/<yyyy>/<mm>/<dd>/<hh>/<strandId>.<first>-<last>.ion|.json   blocks_per_object blocks each

The blocks are rebuilt from the stream records *after* tampering: a ``BLOCK_SUMMARY`` without
``revisionSummaries``, with ``revisions`` - the user revisions' ``REVISION_DETAILS`` revision
structs and ``{hash}`` for system entries, in summary order. A tamper therefore lands in the
export exactly where it landed in the stream, and the stream's expected verdicts hold for the
export. Tampers that have no place in a block (``tableInfo``, a revision's ``hash`` or
``blockAddress`` or ``metadata.id|txId`` alone, ``revisionSummaries``, a KPL aggregate: the
export keeps one hash and one id per revision and no Kinesis framing) are refused.

``JSON`` objects are Ion down-converted as the Ion specification's JSON down-conversion does it
[DOC amazon-ion "Down-converting to JSON"]: blobs as base64 strings, timestamps as strings of
their Ion text, decimals as JSON numbers, symbols as strings, annotations dropped.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amazon.ion import simpleion
from amazon.ion.core import Timestamp
from amazon.ion.simple_types import IonPyNull

from qldbstream.core.errors import ConfigurationError
from qldbstream_tools.simulate.tamper import BlockTarget, KplTarget
from qldbstream_tools.simulate.values import base62_id, timestamp_ms

if TYPE_CHECKING:
    from qldbstream_tools.simulate import Simulation

__all__ = ["FORMATS", "ExportFiles", "export_blocks", "export_files", "write_export"]

FORMATS = ("ION_TEXT", "ION_BINARY", "JSON")
#: fields of a revision a tamper may change and still sit in an exported block as in the stream
_REVISION_FIELDS = ("data", "dataHash", "metadata.version", "metadata.txTime")


@dataclass(frozen=True)
class ExportFiles:
    """What :func:`write_export` wrote: keys relative to the bucket, and the export's names."""

    export_id: str
    strand_id: str
    prefix: str
    started_key: str
    completed_key: str
    object_keys: tuple[str, ...]


def check_tampers(sim: Simulation) -> None:
    """Refuse tampers whose effect an export cannot show as the stream does (see the module doc)."""
    for t in sim.config.tampers:
        if isinstance(t.target, KplTarget):
            raise ConfigurationError(f"--tamper {t.spec}: an export has no KPL aggregates")
        if isinstance(t.target, BlockTarget):
            if t.field.startswith("revisionSummaries"):
                raise ConfigurationError(
                    f"--tamper {t.spec}: an exported block has no revisionSummaries "
                    "(its revisions carry the hashes)"
                )
            continue
        if not (t.field.startswith(_REVISION_FIELDS) or (t.rehash != "none" and t.field == "hash")):
            raise ConfigurationError(
                f"--tamper {t.spec}: {t.field} has no place of its own in an exported block "
                f"(an export can show tampers of {', '.join(_REVISION_FIELDS)} and block fields)"
            )


def export_blocks(sim: Simulation) -> Iterator[dict[str, Any]]:
    """The journal blocks as an export holds them, in journal order, tampers included."""
    records = sim.records
    i = 0
    while i < len(records):
        rec = records[i]
        i += 1
        if rec.record_type != "BLOCK_SUMMARY":
            continue
        payload = dict(rec.value["payload"])
        summaries = payload.pop("revisionSummaries", None) or []
        details = []
        while i < len(records) and records[i].record_type == "REVISION_DETAILS":
            details.append(records[i].value["payload"]["revision"])
            i += 1
        users = iter(details)
        revisions: list[Any] = []
        for entry in summaries:
            if "documentId" in entry:
                revisions.append(next(users))
            else:
                revisions.append({"hash": entry["hash"]})
        payload["revisions"] = revisions
        yield payload


def _json_value(value: Any) -> Any:
    """Ion down-converted to JSON (module doc)."""
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Timestamp | datetime):
        return simpleion.dumps(value, binary=False).removeprefix("$ion_1_0 ")
    if value is None or isinstance(value, IonPyNull):
        return None
    return value


def _dumps_json(value: Any) -> str:
    """Compact JSON; a decimal is written as a JSON number with its own digits (Ion's down-conversion)."""
    if isinstance(value, Mapping):
        return (
            "{"
            + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{_dumps_json(v)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, list):
        return "[" + ",".join(_dumps_json(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else "null"
    return json.dumps(value, ensure_ascii=False)


def _encode(values: list[Any], output_format: str) -> bytes:
    if output_format == "ION_BINARY":
        data: bytes = simpleion.dumps(values, binary=True, sequence_as_stream=True)
        return data
    if output_format == "ION_TEXT":
        return "".join(
            simpleion.dumps(v, binary=False).removeprefix("$ion_1_0 ") + "\n" for v in values
        ).encode("utf-8")
    return "".join(_dumps_json(_json_value(v)) + "\n" for v in values).encode("utf-8")


def _manifest(value: Mapping[str, Any], output_format: str) -> bytes:
    if output_format == "JSON":
        return (_dumps_json(_json_value(value)) + "\n").encode("utf-8")
    if output_format == "ION_BINARY":
        data: bytes = simpleion.dumps(value, binary=True)
        return data
    text: str = simpleion.dumps(value, binary=False)
    return (text.removeprefix("$ion_1_0 ") + "\n").encode("utf-8")


def export_files(
    sim: Simulation,
    *,
    output_format: str = "ION_TEXT",
    blocks_per_object: int = 100,
    bucket: str = "simbank-export",
    prefix: str = "journalExport",
) -> Iterator[tuple[str, bytes]]:
    """``(key, bytes)`` of every object of the export, manifests last (as QLDB completes them)."""
    if output_format not in FORMATS:
        raise ConfigurationError(f"export format {output_format!r}: expected one of {', '.join(FORMATS)}")
    if blocks_per_object < 1:
        raise ConfigurationError(f"--export-blocks-per-object must be at least 1, not {blocks_per_object}")
    check_tampers(sim)
    export_id = base62_id(random.Random(f"qldbstream.simulate/{sim.config.seed}/export"))
    strand = sim.journal.strand_id
    head = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    ext = "json" if output_format == "JSON" else "ion"
    blocks = sim.journal.blocks
    start = timestamp_ms(blocks[0].timestamp_ms // 3_600_000 * 3_600_000)
    end = timestamp_ms(blocks[-1].timestamp_ms + 1)
    started = {
        "ledgerName": sim.config.ledger_name,
        "exportId": export_id,
        "inclusiveStartTime": start,
        "exclusiveEndTime": end,
        "bucket": bucket,
        "prefix": prefix,
        "objectEncryptionType": "NO_ENCRYPTION",
        "outputFormat": output_format,
    }
    yield f"{head}{export_id}.started.manifest", _manifest(started, output_format)
    keys: list[str] = []
    chunk: list[dict[str, Any]] = []
    for block in export_blocks(sim):
        chunk.append(block)
        if len(chunk) == blocks_per_object:
            key = _object_key(head, strand, chunk, ext)
            keys.append(key)
            yield key, _encode(chunk, output_format)
            chunk = []
    if chunk:
        key = _object_key(head, strand, chunk, ext)
        keys.append(key)
        yield key, _encode(chunk, output_format)
    yield f"{head}{export_id}.{strand}.completed.manifest", _manifest({"keys": keys}, output_format)


def _object_key(head: str, strand: str, chunk: list[dict[str, Any]], ext: str) -> str:
    first, last = chunk[0]["blockAddress"]["sequenceNo"], chunk[-1]["blockAddress"]["sequenceNo"]
    when = chunk[0]["blockTimestamp"]
    return (
        f"{head}{when.year:04d}/{when.month:02d}/{when.day:02d}/{when.hour:02d}/{strand}.{first}-{last}.{ext}"
    )


def write_export(
    sim: Simulation,
    directory: str | Path,
    *,
    output_format: str = "ION_TEXT",
    blocks_per_object: int = 100,
    bucket: str = "simbank-export",
    prefix: str = "journalExport",
) -> ExportFiles:
    """Write the export under ``directory`` as a copy of the bucket (keys as paths)."""
    root = Path(directory)
    written: list[str] = []
    for key, data in export_files(
        sim, output_format=output_format, blocks_per_object=blocks_per_object, bucket=bucket, prefix=prefix
    ):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(key)
    started, *objects, completed = written
    return ExportFiles(
        started.rsplit("/", 1)[-1].split(".")[0],
        sim.journal.strand_id,
        prefix,
        started,
        completed,
        tuple(objects),
    )
