"""Strict KPL deaggregation, checked against aws-kinesis-agg (the oracle) with hypothesis."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import deaggregate_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qldbstream.core.deaggregate import KPL_MAGIC, deaggregate, parse_aggregate
from qldbstream.core.errors import DeaggregationError
from qldbstream.core.records import KinesisRecord

#: every test here runs with both scanners: pure Python and the compiled extension
pytestmark = pytest.mark.usefixtures("scanner")

SEQ = "49608533396912580565843582016389495421776335424639205378"

partition_keys = st.text(min_size=1, max_size=40)
explicit_hash_keys = st.none() | st.integers(min_value=0, max_value=2**128 - 1).map(str)
payloads = st.binary(max_size=300)
user_records = st.lists(st.tuples(partition_keys, payloads, explicit_hash_keys), min_size=1, max_size=60)


def aggregate(records: list[tuple[str, bytes, str | None]]) -> list[bytes]:
    """Aggregate with the reference KPL aggregator; it may split into several aggregates."""
    done: list[bytes] = []
    agg = RecordAggregator()
    agg.on_record_complete(lambda rec: done.append(rec.get_contents()[2]), execute_on_new_thread=False)
    for pk, data, ehk in records:
        agg.add_user_record(pk, data, ehk)
    last = agg.clear_and_get()
    if last is not None:
        done.append(last.get_contents()[2])
    return done


def oracle(data: bytes) -> list[tuple[str, str | None, bytes, int]]:
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
        out.append(
            (
                k["partitionKey"],
                k.get("explicitHashKey"),
                base64.b64decode(k["data"]),
                k.get("subSequenceNumber", 0),
            )
        )
    return out


def ours(data: bytes) -> list[tuple[str, str | None, bytes, int]]:
    rec = KinesisRecord(
        data=data, sequence_number=SEQ, partition_key="outer", shard_id="shardId-000000000000"
    )
    return [(u.partition_key, u.explicit_hash_key, u.data, u.sub_sequence_number) for u in deaggregate(rec)]


def with_md5(body: bytes) -> bytes:
    return KPL_MAGIC + body + hashlib.md5(body).digest()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(user_records)
def test_matches_the_reference_deaggregator(records: list[tuple[str, bytes, str | None]]) -> None:
    for blob in aggregate(records):
        assert blob[:4] == KPL_MAGIC
        mine, theirs = ours(blob), oracle(blob)
        assert [(pk, d, sub) for pk, _, d, sub in mine] == [(pk, d, sub) for pk, _, d, sub in theirs]
        # Oracle quirk: a sub-record without explicit_hash_key_index reads protobuf's default 0,
        # so aws-kinesis-agg reports the table's first key for it. Compare where it is set.
        for (_, my_ehk, _, _), (_, their_ehk, _, _) in zip(mine, theirs, strict=True):
            if my_ehk is not None:
                assert my_ehk == their_ehk
    flat = [(pk, ehk, data) for blob in aggregate(records) for pk, ehk, data, _ in ours(blob)]
    assert flat == [(pk, ehk, data) for pk, data, ehk in records]


def test_large_records_and_many_sub_records() -> None:
    big = [("pk-big", bytes(range(256)) * 3000, None), ("pk-small", b"x", "12345")]
    blobs = aggregate(big)
    assert [u[2] for b in blobs for u in ours(b)] == [r[1] for r in big]
    many = [(f"key-{i % 7}", f"record {i}".encode(), None) for i in range(2000)]
    blobs = aggregate(many)
    got = [u for b in blobs for u in ours(b)]
    assert [u[2] for u in got] == [r[1] for r in many]
    assert all(ours(b) == oracle(b) for b in blobs)


def test_empty_user_records_and_unicode_keys() -> None:
    records = [("ключ-🔑", b"", None), ("日本語", b"", "340282366920938463463374607431768211455")]
    (blob,) = aggregate(records)
    assert ours(blob) == [
        ("ключ-🔑", None, b"", 0),
        ("日本語", "340282366920938463463374607431768211455", b"", 1),
    ]
    # the oracle gives the first sub-record the second one's explicit hash key (see above)
    assert [r[2:] for r in oracle(blob)] == [r[2:] for r in ours(blob)]


def test_plain_record_passes_through_with_its_own_keys() -> None:
    rec = KinesisRecord(
        data=b"\xe0\x01\x00\xea", sequence_number=SEQ, partition_key="pk", explicit_hash_key="7"
    )
    (u,) = deaggregate(rec)
    assert (u.data, u.partition_key, u.explicit_hash_key, u.sub_sequence_number, u.aggregated) == (
        rec.data,
        "pk",
        "7",
        0,
        False,
    )
    assert u.parent is rec


@settings(max_examples=200)
@given(user_records, st.data())
def test_any_corruption_is_a_typed_error_where_the_oracle_passes_garbage(
    records: list[tuple[str, bytes, str | None]], data: st.DataObject
) -> None:
    blob = aggregate(records)[0]
    i = data.draw(st.integers(min_value=4, max_value=len(blob) - 1), label="byte")
    flip = data.draw(st.integers(min_value=1, max_value=255), label="xor")
    bad = bytearray(blob)
    bad[i] ^= flip
    bad_bytes = bytes(bad)
    rec = KinesisRecord(data=bad_bytes, sequence_number=SEQ, shard_id="shardId-000000000003")
    with pytest.raises(DeaggregationError) as info:
        deaggregate(rec)
    assert info.value.position is not None
    assert info.value.position.sequence_number == SEQ
    assert info.value.position.shard_id == "shardId-000000000003"
    assert "MD5" in str(info.value)
    # The oracle hands the corrupt aggregate on as if it were a plain user record.
    assert oracle(bad_bytes) == [("outer", None, bad_bytes, 0)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x0a\x05ab", "runs past the end"),  # partition key table entry runs past the end
        (b"\x1a\x01\x08", "truncated"),  # a record cut inside a varint
        (b"\x0a\x01a\x1a\x02\x1a\x00", "partition_key_index"),  # record without pk index
        (b"\x0a\x01a\x1a\x02\x08\x00", "data field is missing"),
        (b"\x0a\x01a\x1a\x04\x08\x03\x1a\x00", "outside the table"),  # pk index 3 of 1
        (b"\x0a\x01a\x1a\x06\x08\x00\x10\x00\x1a\x00", "explicit_hash_key_index"),
        (b"\x08\x01", "wire type"),  # field 1 sent as a varint
        (b"\x0b", "wire type 3"),  # groups are not allowed
        (b"\x0a\x02\xff\xfe", "UTF-8"),
        (b"\x00\x01", "number 0"),
    ],
)
def test_malformed_protobuf_with_a_valid_md5(body: bytes, message: str) -> None:
    blob = with_md5(body)
    with pytest.raises(DeaggregationError, match=message):
        parse_aggregate(blob)


def test_too_short_to_be_an_aggregate() -> None:
    with pytest.raises(DeaggregationError, match="only 10 bytes"):
        deaggregate(KinesisRecord(data=KPL_MAGIC + b"\x00" * 6, sequence_number="1"))


def test_unknown_fields_are_skipped_like_protobuf_does() -> None:
    # field 15 (varint), field 16 (fixed64), field 17 (fixed32), field 18 (bytes) + one record
    body = b"\x78\x01" + b"\x81\x01" + b"\x00" * 8 + b"\x8d\x01" + b"\x00" * 4 + b"\x92\x01\x01z"
    body += b"\x0a\x01k\x1a\x05\x08\x00\x1a\x01d"
    assert parse_aggregate(with_md5(body)) == [("k", None, b"d")]


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_fuzz_never_crashes(body: bytes) -> None:
    with contextlib.suppress(DeaggregationError):
        parse_aggregate(with_md5(body))
