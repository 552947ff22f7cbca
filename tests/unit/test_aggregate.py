"""KPL aggregation: round trips through our strict parser and through aws-kinesis-agg (the oracle)."""

from __future__ import annotations

import base64
import hashlib
import itertools

import pytest
from aws_kinesis_agg.deaggregator import deaggregate_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qldbstream.core.aggregate import MAX_RECORD_BYTES, AggregatedRecord, aggregate, aggregated_size, pack
from qldbstream.core.deaggregate import KPL_MAGIC, parse_aggregate

SEQ = "49608533396912580565843582016389495421776335424639205378"

partition_keys = st.text(min_size=1, max_size=40)
# Real explicit hash keys are decimal 128-bit integers; aws-kinesis-agg treats "" as "no key".
explicit_hash_keys = st.none() | st.integers(min_value=0, max_value=2**128 - 1).map(str)
user_records = st.lists(
    st.tuples(partition_keys, explicit_hash_keys, st.binary(max_size=300)), min_size=1, max_size=60
)


def oracle(data: bytes) -> list[tuple[str, str | None, bytes]]:
    """Deaggregate with aws-kinesis-agg, the reference implementation."""
    event = {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "sequenceNumber": SEQ,
            "partitionKey": "outer",
            "approximateArrivalTimestamp": 1.0,
            "data": base64.b64encode(data),
        }
    }
    out = []
    for r in deaggregate_records([event]):
        k = r["kinesis"]
        assert k.get("aggregated") is True, "the oracle did not recognise the aggregate"
        out.append((k["partitionKey"], k.get("explicitHashKey"), base64.b64decode(k["data"])))
    return out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(user_records)
def test_round_trip_through_our_parser(entries: list[tuple[str, str | None, bytes]]) -> None:
    data = aggregate(entries)
    assert data.startswith(KPL_MAGIC)
    assert parse_aggregate(data) == entries
    assert aggregated_size(entries) == len(data)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(user_records)
def test_round_trip_through_the_oracle(entries: list[tuple[str, str | None, bytes]]) -> None:
    theirs = oracle(aggregate(entries))
    assert [(pk, data) for pk, _, data in theirs] == [(pk, data) for pk, _, data in entries]
    # Oracle quirk: a sub-record without explicit_hash_key_index reads protobuf's default 0, so
    # aws-kinesis-agg reports the table's first key for it. Compare where the key is set.
    for (_, their_ehk, _), (_, ehk, _) in zip(theirs, entries, strict=True):
        if ehk is not None:
            assert their_ehk == ehk
        elif all(e is None for _, e, _ in entries):
            assert their_ehk is None


def test_partition_keys_are_deduplicated_in_first_use_order() -> None:
    data = aggregate([("b", None, b"1"), ("a", "7", b"2"), ("b", "7", b"3"), ("a", None, b"4")])
    body = data[4:-16]
    assert hashlib.md5(body).digest() == data[-16:]
    # partition_key_table: "b", "a"; explicit_hash_key_table: "7" - each stored once.
    assert body.startswith(b"\x0a\x01b\x0a\x01a\x12\x017\x1a")
    assert body.count(b"\x0a\x01") == 2
    assert parse_aggregate(data) == [("b", None, b"1"), ("a", "7", b"2"), ("b", "7", b"3"), ("a", None, b"4")]


def test_known_encoding_of_a_single_record() -> None:
    # Hand-encoded: table entry "k", then Record{pk_index 0, data "xy"}.
    protobuf = b"\x0a\x01k" + b"\x1a\x06" + b"\x08\x00\x1a\x02xy"
    assert aggregate([("k", None, b"xy")]) == KPL_MAGIC + protobuf + hashlib.md5(protobuf).digest()


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(user_records, st.integers(min_value=400, max_value=4000))
def test_pack_respects_the_size_bound_and_keeps_order(
    entries: list[tuple[str, str | None, bytes]], max_bytes: int
) -> None:
    packed = list(pack(entries, max_bytes=max_bytes))
    assert all(isinstance(r, AggregatedRecord) for r in packed)
    assert all(r.size <= max_bytes for r in packed)
    flat = [e for r in packed for e in parse_aggregate(r.data)]
    assert flat == entries
    assert sum(r.count for r in packed) == len(entries)
    # Each Kinesis record takes the partition key of its first user record (KPL behaviour).
    assert [r.partition_key for r in packed] == [parse_aggregate(r.data)[0][0] for r in packed]
    # Greedy: the first record of the next aggregate would not have fitted in the previous one.
    for prev, nxt in itertools.pairwise(packed):
        first = parse_aggregate(nxt.data)[0]
        grown = aggregate([*parse_aggregate(prev.data), first])
        assert len(grown) + len(prev.partition_key.encode()) > max_bytes


def test_pack_splits_a_large_block_into_several_one_mib_records() -> None:
    pk = "a" * 64
    entries = [(f"{i:064x}", None, bytes([i % 256]) * 100_000) for i in range(25)]
    packed = list(pack(entries, partition_key=pk))
    assert len(packed) == 3
    assert all(r.partition_key == pk and r.size <= MAX_RECORD_BYTES for r in packed)
    assert [e for r in packed for e in oracle(r.data)] == entries  # no explicit hash keys: no quirk


def test_pack_rejects_a_record_that_can_never_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        list(pack([("k", None, b"x" * MAX_RECORD_BYTES)]))


def test_pack_of_nothing_is_nothing() -> None:
    assert list(pack([])) == []
