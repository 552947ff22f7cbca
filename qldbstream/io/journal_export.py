"""Read a QLDB journal export (``ExportJournalToS3``) from a local copy or from S3, block by block.

An export is (qldb-stream-format.md §9, with sources):

* ``<prefix>/<exportId>.started.manifest`` - the request: ``exportId``, ``bucket``, ``prefix``,
  the time range and, when it was asked for, ``outputFormat`` (``ION_TEXT`` when absent);
* ``<prefix>/<exportId>.<strandId>.completed.manifest`` per strand - ``{keys: [...]}``, the ordered
  list of the S3 keys of the data objects written for that strand;
* the data objects, each a sequence of journal blocks in journal order, named
  ``.../<strandId>.<firstSequenceNo>-<lastSequenceNo>.<ext>``: Ion text, Ion binary, or JSON Lines
  (one block a line, down-converted from Ion).

:func:`open_export` takes a directory (a copy of the bucket, or of the export's prefix: a manifest
key is looked for as it is, then with its leading folders dropped one by one), a path to one
of the manifests, or ``s3://bucket/prefix``. :meth:`JournalExport.blocks` streams the blocks in
journal order, one data object in memory at a time; each block comes with the stream records
:func:`qldbstream.io.journal_values.block_records` makes of it, so the verifier reads it as it
reads a stream. :meth:`JournalExport.items` yields, in the same walk, an :class:`ExportProblem`
for what is wrong with the export itself (a listed object missing, objects out of order,
sequence ranges that overlap or leave holes, a block whose address disagrees with its object's
name); :meth:`~JournalExport.blocks` raises those as :class:`ExportError` instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qldbstream.core.errors import InputError
from qldbstream.io.export_objects import (
    ExportBlock,
    ExportError,
    ExportObject,
    ExportProblem,
    address_of,
    object_of,
    range_problems,
)
from qldbstream.io.export_store import S3Store, loads_ion, read_manifest, store_for
from qldbstream.io.journal_values import block_records, ion_from_json, is_block

__all__ = [
    "OUTPUT_FORMATS",
    "ExportBlock",
    "ExportError",
    "ExportObject",
    "ExportProblem",
    "JournalExport",
    "is_export",
    "open_export",
]

OUTPUT_FORMATS = ("ION_TEXT", "ION_BINARY", "JSON")
_ION_BVM = b"\xe0\x01\x00\xea"
_STARTED = re.compile(r"(?:^|/)(?P<export>[A-Za-z0-9]+)\.started\.manifest$")
_COMPLETED = re.compile(r"(?:^|/)(?P<export>[A-Za-z0-9]+)\.(?P<strand>[A-Za-z0-9]+)\.completed\.manifest$")


def is_export(location: str) -> bool:
    """A local folder (or manifest file) holding a journal export's manifest; never touches S3."""
    if location.startswith("s3://"):
        return True
    path = Path(location)
    if path.is_file():
        return bool(_STARTED.search(path.name) or _COMPLETED.search(path.name))
    if not path.is_dir():
        return False
    return any(
        p.name.endswith((".started.manifest", ".completed.manifest")) for p in path.rglob("*.manifest")
    )


@dataclass
class JournalExport:
    """One export: its manifests read, its data objects streamed on demand."""

    location: str
    export_id: str
    output_format: str
    strand_ids: list[str]
    started: Mapping[str, Any] | None = None
    _store: Any = None
    _manifests: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    _problems: list[ExportProblem] = field(default_factory=list)
    _all_keys: list[str] = field(default_factory=list)
    _known: set[str] | None = None

    # ---- the objects ----------------------------------------------------------------------
    def objects(self) -> Iterator[ExportObject]:
        """The data objects in manifest order, strand by strand."""
        for strand in self.strand_ids:
            for key in self._manifests[strand][1]:
                yield object_of(strand, key)

    def _resolve(self, key: str) -> str | None:
        """Where ``key`` is in this copy: as given, else with leading folders dropped one by one."""
        store = self._store
        if isinstance(store, S3Store):
            candidates = [key] + [f"{store.prefix.rstrip('/')}/{k}".lstrip("/") for k in _tails(key)]
        else:
            candidates = list(_tails(key))
        known = self._known_keys()
        for c in candidates:
            if c in known:
                return c
        return None

    def _known_keys(self) -> set[str]:
        if self._known is None:
            self._known = set(self._all_keys)
        return self._known

    # ---- the walk ---------------------------------------------------------------------------
    def items(self, after: tuple[str, int] | None = None) -> Iterator[ExportBlock | ExportProblem]:
        """Blocks in journal order and, where they occur, the export's problems."""
        yield from self._problems
        if not self.strand_ids:
            return
        yield from self._unlisted()
        for strand in self.strand_ids:
            if after is not None and self.strand_ids.index(strand) < self.strand_ids.index(after[0]):
                continue
            floor = after[1] if after is not None and after[0] == strand else None
            yield from self._strand(strand, floor)

    def blocks(self, after: tuple[str, int] | None = None) -> Iterator[ExportBlock]:
        """Blocks in journal order (strand, sequenceNo), resuming after ``after``; problems raise."""
        if after is not None and after[0] not in self.strand_ids:
            raise InputError(f"{self.location}: no strand {after[0]!r} in export {self.export_id}")
        for item in self.items(after):
            if isinstance(item, ExportProblem):
                raise ExportError(item)
            yield item

    def _unlisted(self) -> Iterator[ExportProblem]:
        listed = {self._resolve(k) for _, keys in self._manifests.values() for k in keys}
        for key in self._all_keys:
            name = key.rsplit("/", 1)[-1]
            if key.endswith(".manifest") or key in listed or not name.startswith(self.export_id + "."):
                continue
            yield ExportProblem(
                "unlisted-object",
                f"{key}: a data object of export {self.export_id} that no completed manifest lists",
                key=key,
            )

    def _strand(self, strand: str, floor: int | None) -> Iterator[ExportBlock | ExportProblem]:
        prev: ExportObject | None = None
        for obj in (object_of(strand, k) for k in self._manifests[strand][1]):
            if obj.first_seq is None or obj.last_seq is None:
                yield ExportProblem(
                    "object-name",
                    f"{obj.key}: the name does not say which blocks it holds "
                    "(expected <strandId>.<first>-<last>.<ext>)",
                    strand,
                    obj.key,
                )
            elif obj.strand_id != strand:
                yield ExportProblem(
                    "address-mismatch",
                    f"{obj.key}: named for strand {obj.strand_id}, listed in strand {strand}'s manifest",
                    strand,
                    obj.key,
                )
            if prev is not None and prev.last_seq is not None and obj.first_seq is not None:
                yield from range_problems(strand, prev, obj)
            # the object reaching furthest so far is what the next one must follow
            if (
                obj.first_seq is not None
                and obj.last_seq is not None
                and (prev is None or prev.last_seq is None or obj.last_seq > prev.last_seq)
            ):
                prev = obj
            if floor is not None and obj.last_seq is not None and obj.last_seq <= floor:
                continue
            yield from self._object_blocks(strand, obj, floor)

    def _object_blocks(
        self, strand: str, obj: ExportObject, floor: int | None
    ) -> Iterator[ExportBlock | ExportProblem]:
        where = self._resolve(obj.key)
        data = self._store.read(where) if where is not None else None
        if data is None:
            yield ExportProblem(
                "missing-object",
                f"{obj.key}: listed in strand {strand}'s completed manifest, not found in {self.location}",
                strand,
                obj.key,
                obj.first_seq,
            )
            return
        try:
            values, from_json = self._values(data, obj.key)
        except InputError as exc:
            yield ExportProblem("unreadable-object", f"{obj.key}: {exc}", strand, obj.key, obj.first_seq)
            return
        expected = obj.first_seq
        for index, value in enumerate(values):
            source = f"{obj.key}#{index}"
            if not is_block(value):
                yield ExportProblem(
                    "not-a-block",
                    f"{source}: not a journal block (no blockAddress/blockHash)",
                    strand,
                    obj.key,
                )
                continue
            seq, block_strand = address_of(value)
            if block_strand != strand or seq is None:
                yield ExportProblem(
                    "address-mismatch",
                    f"{source}: blockAddress {{strandId: {block_strand}, sequenceNo: {seq}}} "
                    f"is not in strand {strand}",
                    strand,
                    obj.key,
                    seq,
                )
                continue
            if expected is not None and seq != expected:
                yield ExportProblem(
                    "address-mismatch",
                    f"{source}: block {seq} where the object's name says block {expected} comes next "
                    f"({obj.first_seq}-{obj.last_seq})",
                    strand,
                    obj.key,
                    seq,
                )
            expected = seq + 1
            if floor is not None and seq <= floor:
                continue
            try:
                records = block_records(value, source)
            except InputError as exc:
                yield ExportProblem("not-a-block", str(exc), strand, obj.key, seq)
                continue
            yield ExportBlock(strand, seq, obj.key, value, records, from_json)
        if obj.last_seq is not None and expected is not None and expected != obj.last_seq + 1:
            yield ExportProblem(
                "address-mismatch",
                f"{obj.key}: ends at block {expected - 1}, its name says {obj.last_seq}",
                strand,
                obj.key,
                expected - 1,
            )

    def _values(self, data: bytes, key: str) -> tuple[list[Any], bool]:
        """The values of one data object (one object in memory at a time), and whether it was JSON."""
        if data.startswith(_ION_BVM):
            try:
                return loads_ion(data), False
            except Exception as exc:  # amazon.ion raises bare exceptions for bad input
                raise InputError(f"not valid Ion binary ({exc})") from None
        # JSON Lines: the export says so, or the object is named .json, or it opens with a quoted
        # field name (QLDB's Ion text writes field names bare)
        if self.output_format == "JSON" or key.endswith(".json") or data.lstrip().startswith(b'{"'):
            values = []
            for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    values.append(ion_from_json(json.loads(line)))
                except (ValueError, InputError) as exc:
                    raise InputError(f"line {n} is not a JSON journal block ({exc})") from None
            return values, True
        try:
            return loads_ion(data), False
        except Exception as exc:
            raise InputError(f"not valid Ion text ({exc})") from None


def _tails(key: str) -> Iterator[str]:
    parts = key.strip("/").split("/")
    for i in range(len(parts)):
        yield "/".join(parts[i:])


def _once(found: dict[str, str], name: str, key: str, location: str) -> None:
    if name in found:
        raise InputError(
            f"{location}: two copies of one manifest ({found[name]} and {key}): give the folder of one copy"
        )
    found[name] = key


def open_export(location: str, *, s3_client: Any | None = None) -> JournalExport:
    """The journal export at ``location`` (a folder, a manifest file, or ``s3://bucket/prefix``)."""
    store, named = store_for(location, s3_client)
    keys = store.keys()
    started: dict[str, str] = {}
    completed: dict[str, dict[str, str]] = {}
    for k in keys:
        if m := _STARTED.search(k):
            _once(started, m["export"], k, location)
        elif m := _COMPLETED.search(k):
            _once(completed.setdefault(m["export"], {}), m["strand"], k, location)
    ids = sorted(set(started) | set(completed))
    if named is not None:
        chosen = _STARTED.search(named) or _COMPLETED.search(named)
        if chosen is None:
            raise InputError(f"{location}: not an export manifest (<exportId>.started.manifest)")
        ids = [chosen["export"]]
    if not ids:
        raise InputError(
            f"{location}: no journal export here (no <exportId>.started.manifest or "
            "<exportId>.<strandId>.completed.manifest)"
        )
    if len(ids) > 1:
        raise InputError(
            f"{location}: {len(ids)} exports here ({', '.join(ids)}): give one export's "
            "<exportId>.started.manifest (or a folder holding one export)"
        )
    export_id = ids[0]
    problems: list[ExportProblem] = []
    start_doc: Mapping[str, Any] | None = None
    if export_id in started:
        doc = read_manifest(store, started[export_id])
        start_doc = doc if isinstance(doc, Mapping) else None
        if start_doc is None:
            problems.append(
                ExportProblem("bad-manifest", f"{started[export_id]}: not a struct", key=started[export_id])
            )
    output_format = str(start_doc.get("outputFormat", "ION_TEXT")) if start_doc else "ION_TEXT"
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"{location}: outputFormat {output_format!r} is none of {', '.join(OUTPUT_FORMATS)}")
    manifests: dict[str, tuple[str, list[str]]] = {}
    for strand, key in sorted(completed.get(export_id, {}).items()):
        doc = read_manifest(store, key)
        listed = doc.get("keys") if isinstance(doc, Mapping) else None
        if not isinstance(listed, list) or not all(isinstance(k, str) for k in listed):
            problems.append(
                ExportProblem("bad-manifest", f'{key}: expected {{keys: ["...", ...]}}', strand, key)
            )
            continue
        manifests[strand] = (key, [str(k) for k in listed])
    if not completed.get(export_id):
        problems.append(
            ExportProblem(
                "incomplete",
                f"export {export_id}: no <exportId>.<strandId>.completed.manifest - the export has not "
                "finished (or its final manifest was not copied); nothing to verify",
            )
        )
    if (
        start_doc is None
        and output_format == "ION_TEXT"
        and any(k.endswith(".json") for _, ks in manifests.values() for k in ks)
    ):
        output_format = "JSON"
    export = JournalExport(
        location=location,
        export_id=export_id,
        output_format=output_format,
        strand_ids=list(manifests),
        started=start_doc,
    )
    export._store = store
    export._manifests = manifests
    export._problems = problems
    export._all_keys = keys
    return export
