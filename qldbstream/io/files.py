"""Kinesis records out of files, whatever shape the user saved them in.

The format is recognised from the content, not the file name:

* a **Lambda Kinesis event** (``{"Records": [...]}``), or JSON Lines of events;
* a **JSON Lines dump of Kinesis records** (``data`` base64 + ``sequenceNumber`` …, or boto3's
  ``Data``/``SequenceNumber``/``PartitionKey``), or a JSON array of them;
* **Ion**: binary (one record as received, or several), or text (one or more records);
* a raw **KPL aggregate** (binary, starting with the KPL magic), or lines of **base64** record data;
* AWS CLI ``kinesis get-records`` output (``{"Records": [{"Data", "SequenceNumber", ...}]}``);
* an **archived QLDB shape**: a journal block or revision struct (JSON or Ion, alone or in a list),
  a GetRevision / GetBlock / GetDigest output, a receipt, or one of these one level inside an
  application's own JSON: see :mod:`qldbstream.io.archive_shapes`.

Record-level problems (invalid base64, a record without data) are yielded as errors in place of
the record, so the rest of the input is still processed. An input that cannot be read at all, or
is none of these shapes, raises :class:`~qldbstream.core.errors.InputError` naming the file (and
the line) and what was expected.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from qldbstream.core.deaggregate import KPL_MAGIC
from qldbstream.core.errors import InputError, MalformedIonError, MalformedKinesisRecordError
from qldbstream.core.ion.binary import IVM
from qldbstream.core.ion.symbols import parse_record
from qldbstream.core.records import KinesisRecord, Position
from qldbstream.core.report import Subject
from qldbstream.io.archive_shapes import EXPECTED, Archive, archive_of
from qldbstream.io.journal_values import is_stream_record
from qldbstream.io.lambda_event import kinesis_record, records_from_event
from qldbstream.io.qldb_api import DigestInput, ProofInput

__all__ = ["FileInput", "read_file"]

Item = KinesisRecord | MalformedKinesisRecordError


@dataclass
class FileInput:
    """What a file held: records, and (for archived QLDB shapes) proofs, digests and subjects."""

    path: str
    kind: str
    records: list[Item] = field(default_factory=list)
    proofs: list[ProofInput] = field(default_factory=list)
    digests: list[DigestInput] = field(default_factory=list)
    #: what each archived part was (the report says what its checks established)
    subjects: list[Subject] = field(default_factory=list)


_KINESIS_KEYS = frozenset({"kinesis", "data", "Data", "sequenceNumber", "SequenceNumber"})


def _archived(name: str, found: Archive) -> FileInput:
    return FileInput(name, found.kind, list(found.records), found.proofs, found.digests, found.subjects)


def _is_kinesis_dump(doc: Any) -> bool:
    return isinstance(doc, dict) and bool(_KINESIS_KEYS & doc.keys())


def read_file(path: str | Path) -> FileInput:
    p = Path(path)
    name = str(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror})") from None
    if raw.startswith(IVM):
        return _ion_binary(raw, name)
    if raw.startswith(KPL_MAGIC):
        return FileInput(name, "kpl-aggregate", [KinesisRecord(raw, "", source=name)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{name}: not text, not Ion binary and not a KPL aggregate") from None
    stripped = text.strip()
    if not stripped:
        raise InputError(f"{name}: the file is empty")
    if stripped[0] in "{[":
        try:
            doc = json.loads(stripped)
        except json.JSONDecodeError:
            doc = None
        if doc is not None:
            return _json_document(doc, name)
        if _looks_like_json_lines(stripped):
            return _json_lines(stripped, name)
    if _is_base64_lines(stripped):
        return FileInput(name, "base64-lines", list(_base64_lines(stripped, name)))
    return _ion_input(_ion_values(text, name), name, "ion-text")


def _json_document(doc: Any, name: str) -> FileInput:
    if isinstance(doc, dict) and "Records" in doc:
        records = doc["Records"]
        if (
            isinstance(records, list)
            and records
            and all(_is_kinesis_dump(r) and "kinesis" not in r for r in records)
        ):
            # AWS CLI / SDK GetRecords output: Data, SequenceNumber, PartitionKey, ...
            dumps = [_record_dump(r, f"{name} Records[{i}]") for i, r in enumerate(records)]
            return FileInput(name, "get-records", dumps)
        return FileInput(name, "lambda-event", list(records_from_event(doc, name)))
    found = archive_of(doc, name, from_json=True)
    if found is not None:
        return _archived(name, found)
    if _is_kinesis_dump(doc):
        return FileInput(name, "kinesis-records", [_record_dump(doc, f"{name} record 1")])
    if isinstance(doc, list) and any(
        _is_kinesis_dump(e) or (isinstance(e, dict) and "Records" in e) for e in doc
    ):
        items: list[Item] = []
        for i, entry in enumerate(doc):
            where = f"{name} [{i}]"
            if isinstance(entry, dict) and "Records" in entry:
                items.extend(records_from_event(entry, where))
            else:
                items.append(_record_dump(entry, where))
        return FileInput(name, "kinesis-records", items)
    raise InputError(f"{name}: JSON of an unknown shape; {EXPECTED}")


def _looks_like_json_lines(text: str) -> bool:
    first = text.splitlines()[0].strip()
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def _json_lines(text: str, name: str) -> FileInput:
    """Lambda events, Kinesis record dumps or archived shapes (a JSON journal export: a block a line)."""
    out = FileInput(name, "json-lines")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name} line {n}"
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if isinstance(doc, dict) and "Records" in doc:
            out.records.extend(records_from_event(doc, where))
            continue
        found = archive_of(doc, where, from_json=True)
        if found is not None:
            out.records.extend(found.records)
            out.proofs.extend(found.proofs)
            out.digests.extend(found.digests)
            out.subjects.extend(found.subjects)
        elif _is_kinesis_dump(doc) or out.records:
            out.records.append(_record_dump(doc, where))
        else:
            raise InputError(f"{where}: JSON of an unknown shape; {EXPECTED}")
    return out


def _record_dump(doc: Any, where: str) -> Item:
    """A Kinesis record as dumped by a tool: ``data``/``Data`` plus sequence number and keys."""
    if not isinstance(doc, dict):
        return MalformedKinesisRecordError("not a Kinesis record object", Position(where))
    if "kinesis" in doc:
        try:
            return kinesis_record(doc, where)
        except MalformedKinesisRecordError as exc:
            return exc

    def get(*keys: str) -> Any:
        for k in keys:
            if k in doc:
                return doc[k]
        return None

    seq = get("sequenceNumber", "SequenceNumber")
    shard = get("shardId", "ShardId")
    position = Position(where, shard, seq if isinstance(seq, str) else None)
    data = get("data", "Data")
    if not isinstance(data, str):
        return MalformedKinesisRecordError("record has no base64 'data'", position)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return MalformedKinesisRecordError("record 'data' is not valid base64 (truncated?)", position)
    arrival = get("approximateArrivalTimestamp", "ApproximateArrivalTimestamp")
    if isinstance(arrival, str):
        try:
            arrival = datetime.fromisoformat(arrival).timestamp()
        except ValueError:
            arrival = None
    return KinesisRecord(
        data=raw,
        sequence_number=seq if isinstance(seq, str) else "",
        partition_key=str(get("partitionKey", "PartitionKey") or ""),
        shard_id=shard if isinstance(shard, str) else None,
        approximate_arrival_timestamp=float(arrival) if isinstance(arrival, int | float) else None,
        explicit_hash_key=get("explicitHashKey", "ExplicitHashKey") or None,
        stream_arn=get("streamArn", "StreamARN", "eventSourceARN"),
        source=where,
    )


def _is_base64_lines(text: str) -> bool:
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    return all(set(line.strip()) <= alphabet for line in text.splitlines())


def _base64_lines(text: str, name: str) -> Iterator[Item]:
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        where = f"{name} line {n}"
        try:
            yield KinesisRecord(base64.b64decode(line, validate=True), "", source=where)
        except (binascii.Error, ValueError):
            yield MalformedKinesisRecordError("line is not valid base64 (truncated?)", Position(where))


def _ion_values(data: str | bytes, name: str) -> list[Any]:
    from amazon.ion import simpleion

    try:
        return list(simpleion.loads(data, single_value=False))
    except Exception as exc:  # amazon-ion raises several unrelated exception types
        raise InputError(f"{name}: not a recognised input (as Ion: {exc})") from None


def _ion_binary(raw: bytes, name: str) -> FileInput:
    """One stream record kept byte for byte; several values are split with amazon-ion."""
    try:
        parse_record(raw)
    except MalformedIonError:  # not exactly one value (or not one we can read): split below
        return _ion_input(_ion_values(raw, name), name, "ion-binary")
    try:
        values = _ion_values(raw, name)
    except InputError:  # amazon-ion cannot read it: the scanner says why, per record
        values = []
    if any(not is_stream_record(v) for v in values):
        return _ion_input(values, name, "ion-binary")
    return FileInput(name, "ion-binary", [KinesisRecord(raw, "", source=f"{name} record 1")])


def _ion_input(values: list[Any], name: str, kind: str) -> FileInput:
    """Stream records (each re-encoded as Ion binary: amazon-ion keeps the data model) and archived
    journal values (blocks, revisions, lists of them)."""
    from amazon.ion import simpleion

    out = FileInput(name, kind)
    for i, value in enumerate(values, 1):
        if is_stream_record(value):
            out.records.append(
                KinesisRecord(simpleion.dumps(value, binary=True), "", source=f"{name} record {i}")
            )
            continue
        where = name if len(values) == 1 else f"{name} value {i}"
        found = archive_of(value, where, from_json=False)
        if found is None:
            raise InputError(f"{where}: Ion value of an unknown shape; {EXPECTED}")
        out.kind = kind if len(values) > 1 else f"{kind} {found.kind}"
        out.records.extend(found.records)
        out.proofs.extend(found.proofs)
        out.digests.extend(found.digests)
        out.subjects.extend(found.subjects)
    return out
