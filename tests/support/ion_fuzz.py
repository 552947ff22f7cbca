"""The differential fuzz of the Ion scanner: mutated journal records, three readers, one verdict.

Each mutated user record is given to the pure-Python scanner, the compiled scanner and
amazon-ion (``simpleion.loads``, what ``JournalRecord.ion`` and ``revision.data`` use). They must
agree:

* the two scanners give the same result or the same error (kind and message);
* a record the scanners accept, amazon-ion loads - and to the same value: every field the scan
  returns equals the loaded one, and the Ion hash computed from the bytes (``H(metadata)``,
  ``H(data)``, ``H(transactionInfo)``, ``H(redactionInfo)``, statement texts, the whole record)
  equals the hash of amazon-ion's value (re-encoded by amazon-ion's writer; every
  ``oracle_every``-th accepted record also through PyPI ``ionhash``);
* what amazon-ion cannot load, the scanners refuse (a ``MalformedIonError`` - kind ``ion`` or
  ``hash`` - or, for valid Ion that is no QLDB record, a ``MalformedRecordError``).

A record the scanners refuse as malformed Ion that amazon-ion still loads is counted
(``stricter``), not a disagreement: that is where amazon-ion normalises what it reads (a
timestamp's minute 112 becomes the next hours) and the scanner refuses it on purpose.

Used by ``bench/fuzz_ion.py`` (the full run) and ``tests/unit/test_ion_fuzz.py`` (a slice).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qldbstream.core.deaggregate import KPL_MAGIC, parse_aggregate
from qldbstream.core.errors import (
    IonHashError,
    MalformedIonError,
    MalformedRecordError,
    UnknownRecordTypeError,
)
from qldbstream.core.ion.binary import header, read_varuint
from qldbstream.core.ion.hash import ion_hash_at, ion_hash_bytes
from qldbstream.core.ion.symbols import parse_record
from qldbstream.core.scan import scan_record

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "qldb-real"

# --- the corpus ---------------------------------------------------------------------------------


def _users_of(records: Any) -> Iterator[bytes]:
    for record in records:
        if isinstance(record, Exception):
            continue
        if record.data[:4] == KPL_MAGIC:
            yield from (payload for _, _, payload in parse_aggregate(record.data))
        else:
            yield record.data


def real_records(directory: Path = FIXTURES) -> list[bytes]:
    """Every user record of the real QLDB samples that ``read_file`` reads."""
    from qldbstream.io.files import read_file

    out: list[bytes] = []
    for path in sorted(directory.iterdir()):
        if path.suffix in (".json", ".ion", ".b64"):
            out.extend(_users_of(read_file(path).records))
    return out


def simulated_records(transactions: int = 60, seed: int = 5) -> list[bytes]:
    """Simulated records of every kind (live, deleted, redacted revisions; blocks)."""
    from qldbstream_tools.simulate import DeliveryOptions, SimulationConfig, Workload, simulate

    sim = simulate(
        SimulationConfig(
            seed=seed,
            workload=Workload(transactions=transactions, deletes=4, redactions=3),
            delivery=DeliveryOptions(aggregate=False, shards=1),
        )
    )
    return [d.data for d in sim.deliveries]


def corpus(transactions: int = 60) -> list[bytes]:
    """The seeds: the real records and simulated ones, each scanning cleanly today."""
    seeds = real_records() + simulated_records(transactions)
    out = []
    for data in seeds:
        try:
            scan_record(data)
        except (MalformedIonError, MalformedRecordError, UnknownRecordTypeError):
            continue  # (S8's GetRevision output is not a stream record)
        out.append(data)
    return out


# --- mutations ----------------------------------------------------------------------------------

_INTERESTING = (0x00, 0x0F, 0x0B, 0x0C, 0x0E, 0x1E, 0x21, 0x30, 0x80, 0x8E, 0xC0, 0xD1, 0xDE, 0xE3, 0xFF)
#: bytes that break UTF-8: a lone continuation, a lead without its continuation, overlong,
#: a surrogate's lead, beyond U+10FFFF, never valid
_BAD_UTF8 = (
    b"\x80",
    b"\xc0",
    b"\xc1\xbf",
    b"\xe0\x80",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xff",
    b"\xfe",
)


def values(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """Every value header reachable in a record: ``(type, pos, body_start, body_end, in_struct)``.

    Lenient: stops descending where the bytes stop making sense.
    """
    out: list[tuple[int, int, int, int, int]] = []

    def walk(pos: int, end: int, in_struct: bool, depth: int) -> None:
        while pos < end and depth < 40:
            try:
                if in_struct:
                    _, pos = read_varuint(data, pos, end)
                t, ln, bs, be = header(data, pos, end)
            except MalformedIonError:
                return
            out.append((t, pos, bs, be, 1 if in_struct else 0))
            if ln != 15:
                if t in (11, 12):
                    walk(bs, be, False, depth + 1)
                elif t == 13:
                    walk(bs, be, True, depth + 1)
                elif t == 14:
                    try:
                        alen, p = read_varuint(data, bs, be)
                    except MalformedIonError:
                        return
                    walk(p + alen, be, False, depth + 1)
            pos = be

    walk(4 if data[:4] == b"\xe0\x01\x00\xea" else 0, len(data), False, 0)
    return out


def _byte_mutation(buf: bytearray, rng: random.Random) -> None:
    op = rng.randrange(7)
    lo = 4 if rng.random() < 0.8 and len(buf) > 4 else 0
    if len(buf) <= lo:
        buf += bytes([rng.randrange(256)])
        return
    i = rng.randrange(lo, len(buf))
    if op == 0:
        buf[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        buf[i] = rng.choice(_INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
    elif op == 2:
        del buf[i : i + rng.randint(1, 8)]
    elif op == 3:
        buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    elif op == 4:
        del buf[i:]
    elif op == 5:
        j = rng.randrange(lo, len(buf))
        buf[i], buf[j] = buf[j], buf[i]
    else:
        j = rng.randrange(i, len(buf))
        buf[j:j] = buf[i : i + rng.randint(1, 16)]


def _length_mutation(buf: bytearray, rng: random.Random, vals: list[tuple[int, int, int, int, int]]) -> None:
    """Change a value's length nibble or its VarUInt length by a little or a lot."""
    _t, pos, bs, _, _ = rng.choice(vals)
    td = buf[pos]
    if td & 0x0F == 14 and bs > pos + 1:
        length_at = bs - 1  # the last byte of the VarUInt length
        delta = rng.choice((-2, -1, 1, 2, 0x40))
        buf[length_at] = 0x80 | ((buf[length_at] & 0x7F) + delta) % 128
    else:
        buf[pos] = (td & 0xF0) | rng.randrange(16)


def _timestamp_mutation(buf: bytearray, rng: random.Random, body: tuple[int, int]) -> None:
    start, end = body
    if end <= start:
        return
    i = rng.randrange(start, end)
    op = rng.randrange(6)
    if op == 0:  # a component out of range, end bit kept (minute 112, hour 25, month 13, day 0...)
        buf[i] = 0x80 | rng.choice((0, 12, 13, 24, 25, 29, 30, 31, 32, 59, 60, 61, 112, 127))
    elif op == 1:  # the end bit cleared (the component runs into the next)
        buf[i] &= 0x7F
    elif op == 2:  # an offset (on any precision; beyond +-23:59)
        buf[start] = rng.choice((0x80, 0x81, 0xC1, 0xC0, 0x3F, 0x7F, 0xBF, 0xFF, 0x0B))
    elif op == 3:  # the fraction's exponent or coefficient
        buf[end - 1] = rng.choice((0x80, 0x81, 0xC0, 0xC1, 0xC9, 0xE8, 0x00, 0x01, 0xFF))
    elif op == 4:  # any component value, end bit set
        buf[i] = 0x80 | rng.randrange(128)
    else:
        buf[i] = rng.randrange(256)


def _string_mutation(buf: bytearray, rng: random.Random, body: tuple[int, int]) -> None:
    start, end = body
    if end <= start:
        return
    bad = rng.choice(_BAD_UTF8)
    i = rng.randrange(start, end)
    n = min(len(bad), end - i)
    buf[i : i + n] = bad[:n]


def _decimal_mutation(buf: bytearray, rng: random.Random, body: tuple[int, int]) -> None:
    start, end = body
    if end <= start:
        return
    i = rng.randrange(start, end)
    buf[i] = rng.choice((0x80, 0xC0, 0x00, 0x7F, 0xFF, 0x40, 0x81, 0xC1, rng.randrange(256)))


def _varuint(n: int) -> bytes:
    out = [0x80 | (n & 0x7F)]
    n >>= 7
    while n:
        out.append(n & 0x7F)
        n >>= 7
    return bytes(reversed(out))


def _varint(n: int, negative: bool) -> bytes:
    groups = [n & 0x7F]
    n >>= 7
    while n:
        groups.append(n & 0x7F)
        n >>= 7
    if groups[-1] & 0x40:  # the sign bit is needed: another byte
        groups.append(0)
    groups.reverse()
    groups[-1] |= 0x80
    if negative:
        groups[0] |= 0x40
    return bytes(groups)


def _tl(t: int, body: bytes) -> bytes:
    if len(body) < 14:
        return bytes([(t << 4) | len(body)]) + body
    return bytes([(t << 4) | 14]) + _varuint(len(body)) + body


def _component(rng: random.Random, good: int, bad: tuple[int, ...]) -> bytes:
    raw = _varuint(good if rng.random() < 0.8 else rng.choice(bad))
    if rng.random() < 0.05:
        raw = b"\x00" + raw  # padded
    if rng.random() < 0.03:
        raw = bytes([raw[0] & 0x7F]) + raw[1:]  # the end bit lost
    return raw


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")


def synthetic_value(rng: random.Random) -> bytes:
    """A value of any length: timestamps, decimals, strings, ints, floats, structs, annotations."""
    kind = rng.randrange(9)
    if kind <= 2:  # timestamps, valid more often than not
        offset = rng.choice((0, 0, 60, 1439, 1440, 5000, rng.randrange(1 << 14)))
        unknown = rng.random() < 0.3
        body = _varint(0 if unknown else offset, unknown or rng.random() < 0.3)
        if rng.random() < 0.05:
            body = b"\x00" + body  # a padded offset
        parts = [
            _component(rng, rng.choice((1, 2, 1999, 2000, 2024, 9999)), (0, 10000, 20000)),
            _component(rng, rng.randint(1, 12), (0, 13, 127)),
            _component(rng, rng.randint(1, 31), (0, 32, 127)),
            _component(rng, rng.randint(0, 23), (24, 25, 127)),
            _component(rng, rng.randint(0, 59), (60, 112)),
            _component(rng, rng.randint(0, 59), (60, 61)),
        ]
        n = rng.choice((1, 2, 3, 4, 5, 6, 6, 6))
        body += b"".join(parts[:n])
        if n == 6 and rng.random() < 0.6:
            exponent = rng.choice((-1, -3, -6, -9, -10, -12, -40, 0, 1, rng.randint(-20, 5)))
            body += _varint(abs(exponent), exponent < 0 or rng.random() < 0.05)
            coefficient = rng.choice((0, 1, 5, 123, 999, 10**9 - 1, 10**9, rng.randrange(1 << 40)))
            if coefficient or rng.random() < 0.5:
                raw = _int_bytes(coefficient)
                if rng.random() < 0.05:
                    raw = bytes([raw[0] | 0x80]) + raw[1:]  # negative
                body += raw
        return _tl(6, body)
    if kind == 3:  # decimals
        exponent = rng.choice((0, -2, 6111, 6112, -6176, -6177, 2**31 - 1, rng.randint(-7000, 7000)))
        coefficient = rng.choice((0, 1, 10**34 - 1, 10**40, rng.randrange(1 << 64)))
        raw = _int_bytes(coefficient) if coefficient else b""
        if rng.random() < 0.2:
            raw = bytes([(raw[0] if raw else 0) | 0x80]) + raw[1:]
        return _tl(5, _varint(abs(exponent), exponent < 0) + raw)
    if kind == 4:  # strings and symbols
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.5:
            body = "".join(chr(rng.choice((0x41, 0xE9, 0x20AC, 0x1F600, 0xFFFD))) for _ in range(4)).encode()
        return _tl(8, body) if rng.random() < 0.8 else _tl(7, bytes(rng.randint(0, 3)) + body[:2])
    if kind == 5:  # ints
        return rng.choice((b"\x30", b"\x31\x00", b"\x20", b"\x21\x00", b"\x3f", b"\x2f", b"\x32\x00\x01"))
    if kind == 6:  # floats
        return _tl(4, bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 2, 3, 4, 4, 8, 8, 9)))))
    if kind == 7:  # structs: sorted, empty, with NOP fields
        return rng.choice(
            (b"\xd1\x80", b"\xd1\x83\x84\x21\x01", b"\xd0", b"\xd2\x84\x00", b"\xd3\xff\x21\x01")
        )
    # annotations: SID 0, a system symbol, beyond the table
    sid = rng.choice((0, 4, 9, 120))
    return rng.choice((b"\xe3\x81", b"\xe4\x82\x00")) + _varuint(sid) + b"\x20"


def _inject(buf: bytearray, rng: random.Random, vals: list[tuple[int, int, int, int, int]]) -> bool:
    """Put a synthetic value where a value was; the bytes it leaves over become NOP padding."""
    value = synthetic_value(rng)
    fits = [v for v in vals if v[3] - v[1] >= len(value) + 1 + v[4] and v[3] - v[1] - len(value) < 130]
    if not fits:
        return False
    _, pos, _, end, in_struct = rng.choice(fits)
    room = end - pos - len(value) - in_struct  # a NOP in a struct needs a field name
    nop = (
        bytes([room - 1]) + bytes(room - 1)
        if room < 15
        else b"\x0e" + bytes([0x80 | (room - 2)]) + bytes(room - 2)
    )
    buf[pos:end] = value + (b"\x80" if in_struct else b"") + nop
    return True


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of a record: ``(kind, bytes)``."""
    buf = bytearray(data)
    kinds = ("bytes", "length", "timestamp", "string", "decimal", "int", "inject")
    kind = rng.choices(kinds, (35, 15, 15, 8, 7, 5, 15))[0]
    if kind == "bytes":
        for _ in range(rng.randint(1, 3)):
            _byte_mutation(buf, rng)
        return kind, bytes(buf)
    vals = values(data)
    if kind == "inject":
        if not _inject(buf, rng, vals):
            _byte_mutation(buf, rng)
            return "bytes", bytes(buf)
        return kind, bytes(buf)
    if kind == "length":
        if vals:
            _length_mutation(buf, rng, vals)
        return kind, bytes(buf)
    code = {"timestamp": 6, "string": 8, "decimal": 5, "int": 2}[kind]
    typed = [v for v in vals if v[0] == code or (code == 2 and v[0] == 3)]
    if not typed:
        _byte_mutation(buf, rng)
        return "bytes", bytes(buf)
    _t, pos, bs, be, _ = rng.choice(typed)
    if kind == "timestamp":
        _timestamp_mutation(buf, rng, (bs, be))
    elif kind == "string":
        _string_mutation(buf, rng, (bs, be))
    elif kind == "decimal":
        _decimal_mutation(buf, rng, (bs, be))
    else:  # ints: negative zero, padding
        buf[pos] = rng.choice((0x30, 0x31, 0x20, 0x21, (0x30 | (buf[pos] & 0x0F))))
    return kind, bytes(buf)


# --- the three readers --------------------------------------------------------------------------


def _kind(exc: Exception) -> str:
    if isinstance(exc, IonHashError):
        return "hash"
    if isinstance(exc, MalformedIonError):
        return "ion"
    if isinstance(exc, MalformedRecordError):
        return "record"
    if isinstance(exc, UnknownRecordTypeError):
        return "type"
    return f"crash:{type(exc).__name__}"


def python_scan(data: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", scan_record(data))
    except (MalformedIonError, MalformedRecordError, UnknownRecordTypeError) as exc:
        return ("error", _kind(exc), exc.message)
    except Exception as exc:  # a bug: reported, never hidden
        return ("error", _kind(exc), str(exc))


def native_scan(native: Any) -> Callable[[bytes], tuple[Any, ...]]:
    def scan(data: bytes) -> tuple[Any, ...]:
        try:
            return ("ok", native.scan_record(data))
        except native.NativeDecodeError as exc:
            kind, message = exc.args
            return ("error", kind, message)
        except Exception as exc:  # a panic or a bug
            return ("error", f"crash:{type(exc).__name__}", str(exc))

    return scan


def _typed(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return (type(value).__name__, [_typed(v) for v in value])
    return (type(value).__name__, value)


# --- comparing an accepted record with amazon-ion's value ---------------------------------------


def _text(value: Any) -> str:
    return value.text if hasattr(value, "text") and not isinstance(value, str) else str(value)


def _hash_of_value(value: Any, notes: Counter[str] | None = None) -> bytes:
    """``H(value)`` of an amazon-ion value, re-encoded by amazon-ion's pure-Python writer.

    Not its C writer: that one rounds decimals to 34 digits (decQuad) - ``10**40`` is written as
    ``10**33 * 10**7`` - although its reader gave the exact value. Where the two writers differ
    it is counted in ``notes`` (a writer limitation, not a reading difference).
    """
    from amazon.ion import simpleion

    saved = simpleion.c_ext
    simpleion.c_ext = False
    try:
        exact = simpleion.dumps(value, binary=True)
    finally:
        simpleion.c_ext = saved
    theirs = ion_hash_bytes(exact)
    if notes is not None and ion_hash_bytes(simpleion.dumps(value, binary=True)) != theirs:
        notes["amazon-ion's C writer writes another value than its reader read"] += 1
    return theirs


def value_mismatches(
    data: bytes, scan: tuple[Any, ...], loaded: Any, oracle: Any = None, notes: Counter[str] | None = None
) -> list[str]:
    """Where the scan of ``data`` and amazon-ion's value of it differ (empty: they agree)."""
    bad: list[str] = []

    def same(name: str, ours: Any, theirs: Any) -> None:
        if ours != theirs:
            bad.append(f"{name}: scan {ours!r} != amazon-ion {theirs!r}")

    def hashed(name: str, ours: bytes | None, value: Any) -> None:
        try:
            theirs = _hash_of_value(value, notes)
        except Exception as exc:  # amazon-ion cannot write its own value back
            bad.append(f"{name}: amazon-ion cannot re-encode its value ({type(exc).__name__}: {exc})")
            return
        same(f"H({name})", ours, theirs)
        if oracle is not None:
            try:
                same(f"ionhash H({name})", ours, oracle(value))
            except Exception as exc:
                bad.append(f"ionhash H({name}) fails: {type(exc).__name__}: {exc}")

    try:
        same("qldbStreamArn", scan[1], _text(loaded["qldbStreamArn"]))
        same("recordType", scan[0], _text(loaded["recordType"]))
        payload = loaded["payload"]
        view = parse_record(data)

        def slot_hash(slot: tuple[int, int]) -> bytes:
            return ion_hash_at(view.buf, slot[0], slot[1], view.symbols)

        if scan[0] == "REVISION_DETAILS":
            rev = payload["revision"]
            same("tableName", scan[2], _text(payload["tableInfo"]["tableName"]))
            same("tableId", scan[3], _text(payload["tableInfo"]["tableId"]))
            same("strandId", scan[4], _text(rev["blockAddress"]["strandId"]))
            same("sequenceNo", scan[5], int(rev["blockAddress"]["sequenceNo"]))
            same("hash", scan[6], bytes(rev["hash"]))
            meta = rev["metadata"]
            same("metadata.id", scan[7], _text(meta["id"]))
            same("metadata.version", scan[8], int(meta["version"]))
            same("metadata.txId", scan[9], _text(meta["txId"]))
            hashed("metadata.txTime", slot_hash(scan[10]), meta["txTime"])
            hashed("metadata", scan[13], meta)
            if scan[11] == 0:
                hashed("data", scan[14], rev["data"])
            elif scan[11] == 1:
                same("dataHash", scan[12], bytes(rev["dataHash"]))
        elif scan[0] == "BLOCK_SUMMARY":
            same("strandId", scan[2], _text(payload["blockAddress"]["strandId"]))
            same("sequenceNo", scan[3], int(payload["blockAddress"]["sequenceNo"]))
            same("transactionId", scan[4], _text(payload["transactionId"]))
            hashed("blockTimestamp", slot_hash(scan[5]), payload["blockTimestamp"])
            same("blockHash", scan[6], bytes(payload["blockHash"]))
            same("entriesHash", scan[7], bytes(payload["entriesHash"]))
            same("previousBlockHash", scan[8], bytes(payload["previousBlockHash"]))
            same("entriesHashList", scan[9], [bytes(h) for h in payload["entriesHashList"]])
            summaries = [
                (bytes(s["hash"]), _text(s["documentId"]) if "documentId" in s else None)
                for s in payload["revisionSummaries"]
            ]
            same("revisionSummaries", scan[10], summaries)
            if "transactionInfo" in payload:
                info = payload["transactionInfo"]
                hashed("transactionInfo", scan[12], info)
                for i, (text, digest, text_hash) in enumerate(scan[11]):
                    s = info["statements"][i]
                    same(f"statements[{i}].statement", text, _text(s["statement"]))
                    same(f"statements[{i}].statementDigest", digest, bytes(s["statementDigest"]))
                    hashed(f"statements[{i}].statement", text_hash, s["statement"])
            if "redactionInfo" in payload:
                hashed("redactionInfo", scan[13], payload["redactionInfo"])
        else:
            same("controlRecordType", scan[2], _text(payload["controlRecordType"]))
        try:
            whole = ion_hash_bytes(data)
        except IonHashError:
            whole = None  # a symbol with unknown text outside the hashed values
        if whole is not None:
            hashed("record", whole, loaded)
    except Exception as exc:  # the loaded value lacks what the scan found
        bad.append(f"comparison failed: {type(exc).__name__}: {exc}")
    return bad


# --- one run ------------------------------------------------------------------------------------


@dataclass
class Report:
    """Counts of each outcome and the first disagreements of each kind."""

    outcomes: Counter[str] = field(default_factory=Counter)
    #: what was seen on the way that is no disagreement (amazon-ion's own limits)
    notes: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    disagreements: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def disagree(self, what: str, data: bytes, detail: str, keep: int = 5) -> None:
        self.disagreements[what] += 1
        kept = self.examples.setdefault(what, [])
        if len(kept) < keep:
            kept.append(f"{detail}\n    {data.hex()}")

    def merge(self, other: Report) -> None:
        self.outcomes.update(other.outcomes)
        self.notes.update(other.notes)
        self.mutations.update(other.mutations)
        self.disagreements.update(other.disagreements)
        for k, v in other.examples.items():
            kept = self.examples.setdefault(k, [])
            kept.extend(v[: max(0, 5 - len(kept))])


def check(
    data: bytes,
    report: Report,
    native: Any = None,
    oracle: Any = None,
    loading: Callable[[bool], None] | None = None,
) -> str:
    """Judge one record; count its outcome in ``report`` and return it.

    amazon-ion loads only what the scanners accept: its C reader loops forever on some malformed
    symbol tables (that the scanners refuse), so refused records are counted by error kind.
    ``loading(True)`` / ``loading(False)`` bracket the load (the bench's watchdog).
    """
    from amazon.ion import simpleion

    py = python_scan(data)
    if native is not None:
        nat = native_scan(native)(data)
        if (nat[0], _typed(nat[1:])) != (py[0], _typed(py[1:])):
            report.disagree("python != compiled", data, f"python {py!r}\n    compiled {nat!r}")
    if py[0] == "error":
        if py[1].startswith("crash:"):
            report.disagree("python scanner crashed", data, repr(py))
        outcome = f"refused ({py[1]})"
        report.outcomes[outcome] += 1
        return outcome
    if loading is not None:
        loading(True)
    try:
        loaded = simpleion.loads(data)
        load_error = None
    except Exception as exc:  # amazon-ion's IonException and friends
        loaded, load_error = None, exc
    if loading is not None:
        loading(False)
    if load_error is not None:
        outcome = "accepted, amazon-ion fails"
        report.disagree(outcome, data, f"amazon-ion: {type(load_error).__name__}: {load_error}")
    else:
        mismatches = value_mismatches(data, py[1], loaded, oracle, report.notes)
        if mismatches:
            outcome = "accepted, different value"
            report.disagree(outcome, data, "; ".join(mismatches))
        else:
            outcome = "accepted, same value"
    report.outcomes[outcome] += 1
    return outcome


def record_at(index: int, seed: int, seeds: list[bytes]) -> tuple[str, bytes]:
    """The ``index``-th mutated record of a run (each has its own generator: any one can be redone)."""
    rng = random.Random(seed * 1_000_003 + index)
    kind, data = mutate(rng.choice(seeds), rng)
    if rng.random() < 0.3:  # a second mutation on top, sometimes
        _, data = mutate(data, rng)
    return kind, data


def run(
    start: int,
    stop: int,
    seed: int,
    seeds: list[bytes],
    native: Any = None,
    oracle: Any = None,
    oracle_every: int = 50,
    loading: Callable[[int | None], None] | None = None,
) -> Report:
    """Records ``start`` to ``stop - 1`` of the run ``seed``."""
    report = Report()
    accepted = 0
    for i in range(start, stop):
        kind, data = record_at(i, seed, seeds)
        report.mutations[kind] += 1
        use_oracle = oracle if oracle is not None and accepted % oracle_every == 0 else None
        bracket = None if loading is None else (lambda on, i=i: loading(i if on else None))  # type: ignore[misc]
        outcome = check(data, report, native, use_oracle, bracket)
        if outcome.startswith("accepted"):
            accepted += 1
    return report
