"""DirectoryDeadLetterQueue: atomic writes, oldest-first order, and every envelope field round-trips."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from qldbstream.core.records import Position
from qldbstream.io.dlq import DirectoryDeadLetterQueue
from qldbstream.pipeline.dlq import DeadLetter


def full_letter(**changes: object) -> DeadLetter:
    """A letter with every field set to something other than its default."""
    values: dict[str, object] = {
        "stage": "handler",
        "error_type": "ValueError",
        "error_message": "amount is negative: ünïcode ✓",
        "source": "stream ledger",
        "stream_arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/ledger",
        "shard_id": "shardId-000000000003",
        "sequence_number": "49590338271490256608559692538361571095921575989136588898",
        "sub_sequence_number": 4,
        "partition_key": "pk-7",
        "kinesis_data": "84mawg==",
        "user_record_data": "4AEA6g==",
        "approximate_arrival_timestamp": 1_790_000_000.25,
        "handler": "audit",
        "traceback": 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: no\n',
        "attempts": 5,
        "first_failure_time": 1_790_000_001.5,
        "last_failure_time": 1_790_000_009.75,
        "document_id": "8F0TPCmdNQ6JTRpiLj2TmW",
        "version": 12,
        "block_sequence_no": 1234,
        "verification_failures": [{"check": "V2", "expected": "abc=", "actual": "def=", "inferred": False}],
        "qldbstream_version": "9.9.9",
        "id": "0123456789abcdef0123456789abcdef",
        "sealed": {"user_record_data": {"alg": "AES-256-GCM", "kid": "k", "nonce": "bm9uY2U=", "ct": "Y3Q="}},
        "masked_data": '{ssn:"9f2c"}',
        "masked": True,
    }
    values.update(changes)
    return DeadLetter(**values)  # type: ignore[arg-type]


def test_every_field_round_trips(tmp_path: Path) -> None:
    letter = full_letter()
    defaults = DeadLetter("s", "e", "m", "src", None, None, None, None, None, None, None)
    assert all(getattr(letter, f.name) != getattr(defaults, f.name) for f in fields(DeadLetter))
    dlq = DirectoryDeadLetterQueue(tmp_path / "dlq")
    dlq.put(letter)
    ((handle, got),) = list(dlq.receive())
    assert asdict(got) == asdict(letter)
    assert Path(handle).parent == tmp_path / "dlq"
    assert got.position == Position(
        "stream ledger", "shardId-000000000003", "49590338271490256608559692538361571095921575989136588898", 4
    )


def test_unknown_fields_from_a_newer_version_are_ignored(tmp_path: Path) -> None:
    dlq = DirectoryDeadLetterQueue(tmp_path)
    data = json.loads(full_letter().to_json())
    data["added_in_a_later_version"] = {"x": 1}
    (tmp_path / "000000000000001-abc.json").write_text(json.dumps(data), encoding="utf-8")
    ((_, got),) = list(dlq.receive())
    assert asdict(got) == asdict(full_letter())


def test_entries_come_oldest_failure_first_and_limit_counts(tmp_path: Path) -> None:
    dlq = DirectoryDeadLetterQueue(tmp_path)
    times = [30.5, 10.25, 20.0, 10.25]
    for n, t in enumerate(times):
        dlq.put(full_letter(last_failure_time=1_790_000_000 + t, id=f"{9 - n:032d}"))
    got = [(letter.last_failure_time - 1_790_000_000, letter.id) for _, letter in dlq.receive(limit=100)]
    # by failure time (ms), then by id for letters that failed in the same millisecond
    assert got == [(10.25, f"{6:032d}"), (10.25, f"{8:032d}"), (20.0, f"{7:032d}"), (30.5, f"{9:032d}")]
    assert [letter.id for _, letter in dlq.receive(limit=2)] == [f"{6:032d}", f"{8:032d}"]
    assert len(dlq) == 4


def test_delete_removes_one_entry_and_is_idempotent(tmp_path: Path) -> None:
    dlq = DirectoryDeadLetterQueue(tmp_path)
    dlq.put(full_letter(id="a" * 32))
    dlq.put(full_letter(id="b" * 32))
    handle, _ = next(iter(dlq.receive()))
    dlq.delete(handle)
    dlq.delete(handle)
    assert len(dlq) == 1
    assert [letter.id for _, letter in dlq.receive()] == ["b" * 32]


def test_putting_the_same_letter_twice_keeps_one_entry(tmp_path: Path) -> None:
    dlq = DirectoryDeadLetterQueue(tmp_path)
    dlq.put(full_letter())
    dlq.put(full_letter())
    assert len(dlq) == 1


def test_a_write_that_fails_before_the_rename_leaves_no_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dlq = DirectoryDeadLetterQueue(tmp_path)

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="No space left"):
        dlq.put(full_letter())
    monkeypatch.undo()
    assert len(dlq) == 0 and list(dlq.receive()) == []  # the half-written temp file is never read
    dlq.put(full_letter(id="c" * 32))  # and a later write still works
    assert [letter.id for _, letter in dlq.receive()] == ["c" * 32]


def test_a_crash_between_write_and_rename_leaves_no_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dlq = DirectoryDeadLetterQueue(tmp_path)

    def crash(src: object, dst: object) -> None:
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        dlq.put(full_letter())
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # the temp file is removed on the way out
    assert len(dlq) == 0 and list(dlq.receive()) == []


def _name(letter: DeadLetter) -> str:
    return f"{int(letter.last_failure_time * 1000):015d}-{letter.id}.json"


def test_a_reader_never_sees_a_partial_entry(tmp_path: Path) -> None:
    dlq = DirectoryDeadLetterQueue(tmp_path)
    big = "A" * 400_000
    done = threading.Event()
    seen: set[str] = set()

    def write() -> None:
        for n in range(40):
            dlq.put(full_letter(id=f"{n:032d}", kinesis_data=big, last_failure_time=1_790_000_000.0 + n))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    while True:
        finished = done.is_set()
        for _, letter in dlq.receive(limit=1000):  # JSON that is cut short would raise here
            assert letter.kinesis_data == big
            seen.add(letter.id)
        if finished:
            break
    writer.join()
    assert len(dlq) == 40 and not list(tmp_path.glob(".*.tmp"))
    assert len(seen) == 40


def test_kinesis_record_prefers_the_user_record_and_needs_some_data() -> None:
    record = full_letter(sealed={}).kinesis_record()
    assert record.data == b"\xe0\x01\x00\xea"
    assert (record.sequence_number, record.shard_id, record.source) == (
        "49590338271490256608559692538361571095921575989136588898",
        "shardId-000000000003",
        "dlq " + "0123456789abcdef0123456789abcdef",
    )
    assert full_letter(user_record_data=None, sealed={}).kinesis_record().data == b"\xf3\x89\x9a\xc2"
    with pytest.raises(ValueError, match="carries no record data"):
        full_letter(user_record_data=None, kinesis_data=None, sealed={}).kinesis_record()
    with pytest.raises(ValueError, match="sealed"):  # masking on: only the key opens it
        full_letter().kinesis_record()
