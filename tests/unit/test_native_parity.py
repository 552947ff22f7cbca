"""The compiled extension (``qldbstream_native``) against the pure-Python reference.

For every input both must give the same result - the same values *and* types - or fail the
same way: the same error kind (``MalformedIonError`` ↔ ``"ion"``, ``IonHashError`` ↔ ``"hash"``,
``MalformedRecordError`` ↔ ``"record"``, ``UnknownRecordTypeError`` ↔ ``"type"``,
``DeaggregationError`` ↔ ``"kpl"``) with the same message. Inputs: the real QLDB fixtures,
simulator output (aggregated or not, deletes, redactions, tampering), the official ion-hash
vectors, hypothesis-generated Ion values and QLDB records, and fuzzing (random bytes after the
Ion version marker, byte-mutated real and simulated records, corrupted KPL aggregates).

The module is skipped when the extension is not installed, unless
``REQUIRE_QLDBSTREAM_NATIVE=1`` (CI), which turns a missing extension into a failure.
``QLDBSTREAM_FUZZ_EXAMPLES`` sets the number of fuzz cases per fuzz test (default 3000; run
100000 once locally after touching the native code) and ``QLDBSTREAM_FUZZ_SEED`` shifts the
seeds (default 0) to explore other inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from amazon.ion import simpleion
from amazon.ion.core import IonType, OffsetTZInfo, Timestamp, TimestampPrecision
from amazon.ion.simple_types import IonPyDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qldbstream_tools.simulate import DeliveryOptions, SimulationConfig, Workload, parse_tamper, simulate

from qldbstream.core.aggregate import aggregate
from qldbstream.core.deaggregate import KPL_MAGIC, deaggregate, parse_aggregate
from qldbstream.core.errors import (
    DeaggregationError,
    IonHashError,
    MalformedIonError,
    MalformedRecordError,
    UnknownRecordTypeError,
)
from qldbstream.core.ion.binary import IVM
from qldbstream.core.ion.hash import ion_hash_bytes
from qldbstream.core.scan import scan_record
from qldbstream.io.files import read_file
from tests.unit.test_ion_hash_oracle import ion_values
from tests.unit.test_ion_hash_vectors import _final_digest, _load_vectors, _source_binary

if os.environ.get("REQUIRE_QLDBSTREAM_NATIVE") == "1":
    import qldbstream_native as native  # a missing extension fails the run
else:
    native = pytest.importorskip("qldbstream_native", reason="qldbstream-native is not installed")

FIXTURES = Path(__file__).parent.parent / "fixtures" / "qldb-real"
FUZZ_EXAMPLES = int(os.environ.get("QLDBSTREAM_FUZZ_EXAMPLES", "3000"))
FUZZ_SEED = int(os.environ.get("QLDBSTREAM_FUZZ_SEED", "0"))
HASHES: dict[str, Callable[[bytes], bytes]] = {
    "sha256": lambda d: hashlib.sha256(d).digest(),
    "md5": lambda d: hashlib.md5(d).digest(),
    "identity": bytes,
}

Outcome = tuple[Any, ...]


# --- outcomes ---------------------------------------------------------------------------------


def _typed(value: Any) -> Any:
    """The value with the type of every part spelled out (``1 == True``, ``(1,) != [1]``)."""
    if isinstance(value, tuple | list):
        return (type(value).__name__, [_typed(v) for v in value])
    return (type(value).__name__, value)


def _python_kind(exc: Exception) -> str:
    if isinstance(exc, IonHashError):  # a MalformedIonError subclass: test it first
        return "hash"
    if isinstance(exc, MalformedIonError):
        return "ion"
    if isinstance(exc, MalformedRecordError):
        return "record"
    if isinstance(exc, UnknownRecordTypeError):
        return "type"
    if isinstance(exc, DeaggregationError):
        return "kpl"
    return f"crash:{type(exc).__name__}"


def python_outcome(fn: Callable[..., Any], *args: Any) -> Outcome:
    try:
        return ("ok", _typed(fn(*args)))
    except (MalformedIonError, MalformedRecordError, UnknownRecordTypeError, DeaggregationError) as exc:
        return ("error", _python_kind(exc), exc.message)
    except Exception as exc:  # a pure-Python bug: reported as a mismatch, never hidden
        return ("error", _python_kind(exc), str(exc))


def native_outcome(fn: Callable[..., Any], *args: Any) -> Outcome:
    try:
        return ("ok", _typed(fn(*args)))
    except native.NativeDecodeError as exc:
        kind, message = exc.args
        return ("error", kind, message)


def assert_same_scan(data: bytes) -> Outcome:
    expected = python_outcome(scan_record, data)
    assert native_outcome(native.scan_record, data) == expected, data.hex()
    return expected


def assert_same_hash(data: bytes, algorithm: str = "sha256") -> Outcome:
    expected = python_outcome(ion_hash_bytes, data, HASHES[algorithm])
    assert native_outcome(native.ion_hash_bytes, data, algorithm) == expected, data.hex()
    return expected


def assert_same_aggregate(data: bytes) -> Outcome:
    expected = python_outcome(parse_aggregate, data)
    assert native_outcome(native.parse_aggregate, data) == expected, data.hex()
    return expected


# --- corpora ----------------------------------------------------------------------------------


def _users_of(records: Any) -> Iterator[bytes]:
    for record in records:
        if isinstance(record, Exception):
            continue
        if record.data[:4] == KPL_MAGIC:
            yield from (payload for _, _, payload in parse_aggregate(record.data))
        else:
            yield record.data


@cache
def real_user_records() -> tuple[bytes, ...]:
    """Every user record of the real QLDB fixtures that ``read_file`` can read."""
    out: list[bytes] = []
    for path in sorted(FIXTURES.iterdir()):
        if path.suffix not in (".json", ".ion", ".b64"):
            continue
        out.extend(_users_of(read_file(path).records))
    return tuple(out)


SIMULATIONS = {
    "aggregated": SimulationConfig(
        seed=11,
        workload=Workload(transactions=120, deletes=8, redactions=5),
        delivery=DeliveryOptions(aggregate=True, shards=2),
    ),
    "not-aggregated": SimulationConfig(
        seed=12,
        workload=Workload(transactions=80, deletes=5, redactions=3),
        delivery=DeliveryOptions(aggregate=False, shards=3, duplicate_rate=0.05),
    ),
    "tampered": SimulationConfig(
        seed=13,
        workload=Workload(transactions=120, deletes=6, redactions=4),
        delivery=DeliveryOptions(aggregate=True),
        tampers=tuple(
            parse_tamper(spec)
            for spec in (
                "Transactions#12:data.amount",
                "revision#3:metadata.txTime",
                'revision#5:metadata.version="seven"',
                "Customers#1:data=[1, 2]",
                "revision#9:metadata.id=someSymbol",
                "block=7:entriesHashList[1]",
                "block=9:transactionInfo.statements[0].statement",
                "block=11:blockHash={{AAAA}}",
                "Transactions#3+rehash-block:data.amount=0.01",
                "kpl=10:md5",
            )
        ),
    ),
}


@cache
def simulated_user_records(name: str) -> tuple[bytes, ...]:
    sim = simulate(SIMULATIONS[name])
    out: list[bytes] = []
    for d in sim.deliveries:
        if d.data[:4] != KPL_MAGIC:
            out.append(d.data)
            continue
        try:
            out.extend(payload for _, _, payload in parse_aggregate(d.data))
        except DeaggregationError:
            out.append(d.data)  # the kpl=…:md5 tamper; scanned as is (not Ion)
    return tuple(out)


@cache
def fuzz_corpus() -> tuple[bytes, ...]:
    """Seeds for mutation: the real records and a sample of every simulated kind."""
    sample = [u for name in SIMULATIONS for u in simulated_user_records(name)[:60]]
    return real_user_records() + tuple(sample)


# --- real and simulated records ---------------------------------------------------------------


def test_real_fixtures_are_there() -> None:
    # S1-S8 hold 17 user records (the GetRevision output of S8 is not a stream record: both fail)
    assert len(real_user_records()) >= 15


@pytest.mark.parametrize("index", range(len(real_user_records())))
def test_real_records(index: int) -> None:
    assert_same_scan(real_user_records()[index])


@pytest.mark.parametrize("name", sorted(SIMULATIONS))
def test_simulated_records(name: str) -> None:
    kinds: dict[str, int] = {}
    for data in simulated_user_records(name):
        outcome = assert_same_scan(data)
        key = outcome[1][1][0][1] if outcome[0] == "ok" else f"error:{outcome[1]}"
        kinds[key] = kinds.get(key, 0) + 1
    assert kinds.get("REVISION_DETAILS", 0) > 50 and kinds.get("BLOCK_SUMMARY", 0) > 50, kinds
    if name == "tampered":
        assert any(k.startswith("error:") for k in kinds), kinds


def test_deaggregate_uses_the_same_results_either_way() -> None:
    from qldbstream.core import deaggregate as module

    records = read_file(FIXTURES / "simpledemo_7f20a42_streams_data1.json").records
    module.use_native(False)
    try:
        python = [deaggregate(r) for r in records]
    finally:
        module.use_native(True)
    assert [deaggregate(r) for r in records] == python


# --- Ion hash: the official vectors and generated values --------------------------------------


@cache
def vector_cases() -> tuple[Any, ...]:
    return tuple(_load_vectors())


def test_every_ion_hash_vector() -> None:
    checked = {"identity": 0, "md5": 0}
    for case in vector_cases():
        data = _source_binary(case)
        for algorithm in HASHES:
            outcome = assert_same_hash(data, algorithm)
            if algorithm in case["expect"]:
                assert outcome == ("ok", ("bytes", _final_digest(case["expect"][algorithm])))
                checked[algorithm] += 1
    assert checked == {"identity": 166, "md5": 5}


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(ion_values)
def test_generated_ion_values(value: Any) -> None:
    data = simpleion.dumps(value, binary=True)
    assert_same_hash(data, "sha256")
    assert_same_hash(data, "identity")


def _ion(value: Any) -> bytes:
    return simpleion.dumps(value, binary=True)


def _struct(items: dict[str, Any]) -> Any:
    return IonPyDict.from_value(IonType.STRUCT, items)


timestamps = st.builds(
    lambda ms, offset: Timestamp(
        2024,
        3,
        1,
        9,
        0,
        0,
        precision=TimestampPrecision.SECOND,
        fractional_seconds=Decimal(ms).scaleb(-3),
        tzinfo=OffsetTZInfo(timedelta(minutes=offset)),
    ),
    st.integers(0, 999),
    st.sampled_from([0, 60, -300]),
)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789", min_size=1, max_size=22)
hashes = st.binary(min_size=32, max_size=32)
uints = st.integers(0, 2**70) | st.integers(0, 10**6)
#: block sequence numbers are 64-bit (larger ones are a record error: test_huge_sequence_numbers)
sequence_nos = st.integers(0, 2**64 - 1) | st.integers(0, 10**6)


@st.composite
def revision_records(draw: st.DrawFn) -> bytes:
    revision: dict[str, Any] = {
        "blockAddress": {"strandId": draw(ids), "sequenceNo": draw(sequence_nos)},
        "hash": draw(hashes),
        "metadata": {
            "id": draw(ids),
            "version": draw(uints),
            "txTime": draw(timestamps),
            "txId": draw(ids),
        },
    }
    kind = draw(st.sampled_from(["live", "redacted", "deleted"]))
    if kind == "live":
        revision["data"] = _struct(draw(st.dictionaries(ids, ion_values, max_size=6)))
    elif kind == "redacted":
        revision["dataHash"] = draw(hashes)
    return _ion(
        {
            "qldbStreamArn": "arn:aws:qldb:eu-west-1:123456789012:stream/gen/" + draw(ids),
            "recordType": "REVISION_DETAILS",
            "payload": {"tableInfo": {"tableName": draw(ids), "tableId": draw(ids)}, "revision": revision},
        }
    )


@st.composite
def block_records(draw: st.DrawFn) -> bytes:
    statements = [
        {
            "statement": draw(st.text(max_size=40)),
            "startTime": draw(timestamps),
            "statementDigest": draw(hashes),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    payload: dict[str, Any] = {
        "blockAddress": {"strandId": draw(ids), "sequenceNo": draw(sequence_nos)},
        "transactionId": draw(ids),
        "blockTimestamp": draw(timestamps),
        "blockHash": draw(hashes),
        "entriesHash": draw(hashes),
        "previousBlockHash": draw(hashes | st.just(b"")),
        "entriesHashList": draw(st.lists(hashes, max_size=5)),
        "revisionSummaries": [
            {"hash": draw(hashes), **({"documentId": draw(ids)} if draw(st.booleans()) else {})}
            for _ in range(draw(st.integers(0, 3)))
        ],
    }
    if draw(st.booleans()):
        payload["transactionInfo"] = {
            "statements": statements,
            "documents": _struct(draw(st.dictionaries(ids, ion_values, max_size=3))),
        }
    if draw(st.booleans()):
        payload["redactionInfo"] = _struct(draw(st.dictionaries(ids, ion_values, max_size=3)))
    return _ion({"qldbStreamArn": "arn:x", "recordType": "BLOCK_SUMMARY", "payload": payload})


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(revision_records() | block_records())
def test_generated_qldb_records(data: bytes) -> None:
    assert assert_same_scan(data)[0] == "ok"


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(revision_records() | block_records(), st.integers(2**64, 2**80))
def test_huge_sequence_numbers(data: bytes, seq: int) -> None:
    value = simpleion.loads(data)
    payload = value["payload"]
    address = payload["revision"]["blockAddress"] if "revision" in payload else payload["blockAddress"]
    address["sequenceNo"] = seq
    outcome = assert_same_scan(simpleion.dumps(value))
    assert outcome[0] == "error" and "does not fit in 64 bits" in str(outcome), outcome


# --- fuzzing ----------------------------------------------------------------------------------

_INTERESTING_BYTES = (0x00, 0x0F, 0x0B, 0x0C, 0x0E, 0x1E, 0x80, 0x8E, 0xD1, 0xDE, 0xE3, 0xEE, 0xFF, 0x71)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random byte-level edits (the Ion version marker is kept half of the time)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        lo = 4 if rng.random() < 0.5 and len(buf) > 4 else 0
        if len(buf) <= lo:
            buf += bytes([rng.randrange(256)])
            continue
        i = rng.randrange(lo, len(buf))
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.choice(_INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)
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
    return bytes(buf)


def test_fuzz_random_bytes_after_the_version_marker() -> None:
    rng = random.Random(20240301 + FUZZ_SEED)
    for _ in range(FUZZ_EXAMPLES):
        data = IVM + bytes(rng.randrange(256) for _ in range(rng.randint(0, 48)))
        assert_same_scan(data)
        assert_same_hash(data, "identity")


def test_fuzz_mutated_records() -> None:
    rng = random.Random(7 + FUZZ_SEED)
    corpus = fuzz_corpus()
    outcomes: dict[str, int] = {}
    for _ in range(FUZZ_EXAMPLES):
        data = mutate(rng.choice(corpus), rng)
        outcome = assert_same_scan(data)
        key = "ok" if outcome[0] == "ok" else outcome[1]
        outcomes[key] = outcomes.get(key, 0) + 1
    # the mutations reach past the version marker and the symbol table
    if FUZZ_EXAMPLES >= 1000:
        assert outcomes.get("record", 0) and outcomes.get("ion", 0) and outcomes.get("ok", 0), outcomes


def test_fuzz_mutated_values_hash() -> None:
    rng = random.Random(99 + FUZZ_SEED)
    corpus = fuzz_corpus()
    for _ in range(FUZZ_EXAMPLES // 2):
        data = mutate(rng.choice(corpus), rng)
        assert_same_hash(data, rng.choice(("sha256", "identity")))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=64), st.integers(0, 2**32))
def test_fuzz_hypothesis_bytes(tail: bytes, seed: int) -> None:
    assert_same_scan(IVM + tail)
    assert_same_hash(mutate(IVM + tail, random.Random(seed)), "identity")


# --- nesting depth ----------------------------------------------------------------------------


def _nested_lists(depth: int) -> bytes:
    """``[[[...[]...]]]`` with ``depth`` lists below the outermost, as Ion binary."""
    value = b"\xb0"
    for _ in range(depth):
        n = len(value)
        if n < 14:
            value = bytes([0xB0 | n]) + value
        else:
            length = bytearray([0x80 | (n & 0x7F)])
            n >>= 7
            while n:
                length.insert(0, n & 0x7F)
                n >>= 7
            value = b"\xbe" + bytes(length) + value
    return IVM + value


def test_nesting_up_to_the_limit_hashes_the_same() -> None:
    assert assert_same_hash(_nested_lists(native.MAX_DEPTH), "identity")[0] == "ok"


@pytest.mark.parametrize("depth", [101, 2000, 100_000])
def test_nesting_beyond_the_limit_is_an_ion_error_in_native(depth: int) -> None:
    with pytest.raises(native.NativeDecodeError) as info:
        native.ion_hash_bytes(_nested_lists(depth))
    assert info.value.args == ("ion", f"Ion value is nested more than {native.MAX_DEPTH} levels deep")


@pytest.mark.parametrize("depth", [101, 2000])
def test_nesting_beyond_the_limit_matches_python(depth: int) -> None:
    assert_same_hash(_nested_lists(depth), "identity")


# --- shared symbol tables known only by max_id ----------------------------------------------


def _tl(t: int, body: bytes) -> bytes:
    """An Ion value: type ``t`` and ``body`` with its length."""
    n = len(body)
    if n < 14:
        return bytes([t << 4 | n]) + body
    length = bytearray([0x80 | (n & 0x7F)])
    n >>= 7
    while n:
        length.insert(0, n & 0x7F)
        n >>= 7
    return bytes([t << 4 | 14]) + bytes(length) + body


def _with_shared_import(max_id: int, value: bytes) -> bytes:
    """``$ion_symbol_table::{imports:[{name:"x", version:1, max_id:N}], symbols:["a"]}`` + value."""
    mid = max_id.to_bytes(max(1, (max_id.bit_length() + 7) // 8), "big")
    imp = _tl(13, b"\x84" + _tl(8, b"x") + b"\x85\x21\x01" + b"\x88" + _tl(2, mid))
    table = _tl(13, b"\x86" + _tl(11, imp) + b"\x87" + _tl(11, _tl(8, b"a")))
    return IVM + _tl(14, b"\x81\x83" + table) + value


@pytest.mark.parametrize("max_id", [0, 1, 7, 1000])
def test_shared_imports(max_id: int) -> None:
    a = 10 + max_id  # the local symbol "a" comes after the imported ones
    sid = a.to_bytes(max(1, (a.bit_length() + 7) // 8), "big")
    assert_same_hash(_with_shared_import(max_id, _tl(7, sid)), "identity")  # "a"
    assert_same_hash(_with_shared_import(max_id, b"\x71\x0a"), "identity")  # SID 10: "a" or unknown
    assert_same_hash(_with_shared_import(max_id, _tl(7, (a + 1).to_bytes(2, "big"))), "identity")


@pytest.mark.parametrize("max_id", [2**17, 2**26, 2**40])
def test_huge_max_id_costs_nothing_in_either(max_id: int) -> None:
    # A 60-byte record must not be able to ask for billions of symbol slots: both keep large
    # imported ranges sparse (pure Python: SparseSymbols beyond 2**16 imported IDs).
    a = 10 + max_id
    assert_same_hash(_with_shared_import(max_id, _tl(7, a.to_bytes(6, "big"))), "identity")
    assert_same_hash(_with_shared_import(max_id, b"\x71\x0b"), "identity")  # SID 11: text unknown


def test_huge_max_id_costs_nothing_in_native() -> None:
    a = 10 + 2**40
    data = _with_shared_import(2**40, _tl(7, a.to_bytes(6, "big")))
    assert native.ion_hash_bytes(data, "identity") == b"\x0b\x70a\x0e"
    with pytest.raises(native.NativeDecodeError) as info:
        native.ion_hash_bytes(_with_shared_import(2**40, b"\x71\x0b"))
    assert info.value.args[0] == "hash"  # SID 11: imported, text unknown
    with pytest.raises(native.NativeDecodeError) as info:
        native.ion_hash_bytes(_with_shared_import(2**64, b"\x20"))
    assert info.value.args == ("ion", "Ion symbol table is too large (more than 2**64 symbols)")


# --- KPL aggregates ---------------------------------------------------------------------------

user_records = st.lists(
    st.tuples(st.text(min_size=1, max_size=20), st.none() | st.text(max_size=20), st.binary(max_size=60)),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(user_records)
def test_valid_aggregates(entries: list[tuple[str, str | None, bytes]]) -> None:
    assert assert_same_aggregate(aggregate(entries)) == ("ok", _typed(entries))


def _with_md5(body: bytes) -> bytes:
    return KPL_MAGIC + body + hashlib.md5(body).digest()


@settings(max_examples=300, deadline=None)
@given(user_records, st.integers(0, 2**32))
def test_corrupted_aggregates(entries: list[tuple[str, str | None, bytes]], seed: int) -> None:
    rng = random.Random(seed)
    data = aggregate(entries)
    assert_same_aggregate(mutate(data, rng))  # mostly: MD5 mismatch
    body = mutate(data[4:-16], rng)  # a corrupt protobuf with a matching MD5: the parser's checks
    assert_same_aggregate(_with_md5(body))
    assert_same_aggregate(data[: rng.randrange(len(data))])


def test_fuzz_protobuf_bodies() -> None:
    rng = random.Random(5 + FUZZ_SEED)
    pieces = [
        b"\x0a",
        b"\x12",
        b"\x1a",
        b"\x08",
        b"\x10",
        b"\x22",
        b"\x00",
        b"\x80",
        b"\xff",
        b"\x05",
        b"\x0b",
    ]
    for _ in range(FUZZ_EXAMPLES):
        body = b"".join(
            rng.choice(pieces) if rng.random() < 0.6 else bytes([rng.randrange(256)])
            for _ in range(rng.randint(0, 24))
        )
        assert_same_aggregate(_with_md5(body))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x0a\x01a\x1a\x04\x08\x00\x1a\x00",  # one record, empty data
        b"\x0a\x01a\x1a\x02\x08\x01",  # index outside the table, and no data
        b"\x0a\x01a\x12\x01b\x1a\x06\x08\x00\x10\x00\x1a\x00",  # with an explicit hash key
        b"\x0a\x01a\x1a\x06\x08\x00\x10\x05\x1a\x00",  # explicit hash key index outside the table
        b"\x0a\x02\xc3\x28",  # invalid UTF-8 partition key
        b"\x0a\x01a\x1a\x08\x08\x00\x1a\x00\x22\x02\x12\x00",  # a tag without a key
        b"\x0a\x01a\x1a\x08\x08\x00\x1a\x00\x22\x02\x0a\x00",  # a tag with an empty key
        b"\x0b",  # group wire type
        b"\x08" + b"\xff" * 9 + b"\x02",  # varint beyond 64 bits
        b"\x08" + b"\xff" * 10 + b"\x01",  # varint longer than 10 bytes
        b"\x07\x00",  # field number 0
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # length far past the end
    ],
)
def test_protobuf_edge_cases(body: bytes) -> None:
    assert_same_aggregate(_with_md5(body))


@pytest.mark.parametrize("data", [b"", KPL_MAGIC, KPL_MAGIC + bytes(15), KPL_MAGIC + bytes(16)])
def test_short_aggregates(data: bytes) -> None:
    assert_same_aggregate(data)


# --- dot and Merkle root ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32) | st.just(b"") | st.binary(max_size=40), max_size=9))
def test_dot_and_merkle_root(hashes: list[bytes]) -> None:
    from qldbstream.core import qldb_hash

    # the pure-Python reference, also once qldb_hash itself uses the compiled functions
    dot = getattr(qldb_hash, "_dot_py", qldb_hash.dot)
    merkle_root = getattr(qldb_hash, "_merkle_root_py", qldb_hash.merkle_root)
    assert native.merkle_root(hashes) == merkle_root(hashes)
    for a, b in itertools.pairwise(hashes):
        assert native.dot(a, b) == dot(a, b)


# --- base64 of Lambda events ------------------------------------------------------------------


def _event_outcome(native_first: bool, event: dict[str, Any]) -> list[Any]:
    from qldbstream.core.errors import MalformedKinesisRecordError
    from qldbstream.io import lambda_event

    lambda_event.use_native(native_first)
    try:
        return [
            (type(r).__name__, r.message, r.position) if isinstance(r, MalformedKinesisRecordError) else r
            for r in lambda_event.records_from_event(event, "ev")
        ]
    finally:
        lambda_event.use_native(True)


def assert_same_base64(text: str) -> None:
    # also the compiled decoder alone: it may refuse more than Python (then Python decides), never less
    import binascii

    try:
        expected: Outcome = ("ok", binascii.a2b_base64(text, strict_mode=True))
    except ValueError:
        expected = ("error",)
    with contextlib.suppress(native.NativeDecodeError):
        assert ("ok", native.b64decode(text)) == expected, text
    # and what a Lambda event record with this data becomes, through the compiled event reader
    event = {"Records": [{"kinesis": {"sequenceNumber": "1", "data": text, "partitionKey": "pk"}}]}
    assert _event_outcome(True, event) == _event_outcome(False, event), text


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=300),
    st.lists(st.tuples(st.integers(0, 400), st.sampled_from([*"=A/+-_ \n\x00é", "=="])), max_size=3),
    st.integers(0, 3),
)
def test_base64_like_the_reference(raw: bytes, edits: list[tuple[int, str]], cut: int) -> None:
    import base64

    text = base64.b64encode(raw).decode()
    assert_same_base64(text)
    for at, s in edits:
        text = text[:at] + s + text[at + 1 :]
    assert_same_base64(text)
    assert_same_base64(text[: len(text) - cut])


_B64_EDGES = ("", "QQ==", "QR==", "QQ", "QQ=", "QQ===", "=QQ=", "QUJD", "QUJ=", "QUI=", "QU I=", "é")


@pytest.mark.parametrize("text", [*_B64_EDGES, "QUJDQQ==QUJD", "QUJD\n"])
def test_base64_edge_cases(text: str) -> None:
    assert_same_base64(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_B64_ALPHABET + "=", max_size=40))
def test_base64_alphabet_strings(text: str) -> None:
    assert_same_base64(text)


# --- whole Lambda events -----------------------------------------------------------------------


_anything = st.none() | st.booleans() | st.integers(-2, 2) | st.floats(allow_nan=False) | st.text(max_size=5)
_entries = st.fixed_dictionaries(
    {
        "kinesis": st.fixed_dictionaries(
            {"sequenceNumber": st.sampled_from(["4961", ""]) | _anything},
            optional={
                "data": st.sampled_from(["QUJD", "QUI=", "QR==", "QQ", "", "é"]) | _anything,
                "partitionKey": st.sampled_from(["pk", ""]) | _anything,
                "approximateArrivalTimestamp": st.floats(0, 2e9) | _anything,
                "explicitHashKey": st.sampled_from(["123", ""]) | _anything,
            },
        )
        | _anything,
    },
    optional={
        "eventID": st.sampled_from(["shardId-000000000001:4961", "shardId-2:1", "no-colon", ""])
        | st.none()
        | st.text(max_size=4),
        "eventSourceARN": st.sampled_from(["arn:aws:kinesis:eu-west-1:1:stream/s"]) | _anything,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_entries | _anything, max_size=6))
def test_lambda_events_like_the_reference(entries: list[Any]) -> None:
    event = {"Records": entries}
    assert _event_outcome(True, event) == _event_outcome(False, event)


def test_lambda_event_fixtures_like_the_reference() -> None:
    import json

    for path in sorted(FIXTURES.glob("*.json")):
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and isinstance(doc.get("Records"), list):
            assert _event_outcome(True, doc) == _event_outcome(False, doc), path.name
