"""Bad input: every kind gives a typed error with its position, the rest is still processed, and
``qldbstream verify`` reports it; an input that cannot be read at all exits 2 with one line."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from amazon.ion import simpleion
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qldbstream.cli import main
from qldbstream.core.deaggregate import KPL_MAGIC, parse_aggregate
from qldbstream.core.decode import decode_bytes
from qldbstream.core.errors import (
    DecodeError,
    MalformedIonError,
    MalformedRecordError,
    UnknownRecordTypeError,
)
from qldbstream.core.records import Position
from qldbstream.core.verify import Verifier

#: every test here runs with both scanners: pure Python and the compiled extension
pytestmark = pytest.mark.usefixtures("scanner")

FIXTURES = Path(__file__).parent.parent / "fixtures" / "qldb-real"
S1 = json.loads((FIXTURES / "simpledemo_streams-dynamodb_data.json").read_text())
S1_DATA = base64.b64decode(S1["Records"][0]["kinesis"]["data"])
S1_USER = [d for _, _, d in parse_aggregate(S1_DATA)]  # [block summary, revision]


def event_with(*datas: bytes | str) -> dict[str, Any]:
    """A Lambda event whose records carry ``datas`` (bytes are base64-encoded, str kept as is)."""
    template = S1["Records"][0]
    records = []
    for i, data in enumerate(datas):
        r = copy.deepcopy(template)
        seq = str(49608533396912580565843582016389495421776335424639205378 + i)
        r["kinesis"]["sequenceNumber"] = seq
        r["eventID"] = f"shardId-000000000002:{seq}"
        r["kinesis"]["data"] = data if isinstance(data, str) else base64.b64encode(data).decode()
        records.append(r)
    return {"Records": records}


def run_verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, event: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    code = main(["verify", "--json", "--no-progress", str(path)])
    return code, json.loads(capsys.readouterr().out)


def with_md5(body: bytes) -> bytes:
    return KPL_MAGIC + body + hashlib.md5(body).digest()


def revision_value() -> Any:
    return simpleion.loads(S1_USER[1])


def dumps(value: Any) -> bytes:
    return simpleion.dumps(value, binary=True)


def test_truncated_base64_is_reported_and_the_rest_still_verified(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = S1["Records"][0]["kinesis"]["data"]
    code, report = run_verify(capsys, tmp_path, event_with(good[:101], S1_DATA))
    assert code == 1
    (error,) = report["errors"]
    assert error["type"] == "MalformedKinesisRecordError"
    assert "base64" in error["message"]
    assert error["position"]["sequenceNumber"] == "49608533396912580565843582016389495421776335424639205378"
    assert error["position"]["shardId"] == "shardId-000000000002"
    assert report["records"] == 2 and report["checks"]["V2"] == {"passed": 1, "failed": 0}


def test_bad_md5_is_a_v1_failure_with_position(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = bytearray(S1_DATA)
    bad[200] ^= 0x01
    code, report = run_verify(capsys, tmp_path, event_with(bytes(bad), S1_DATA))
    assert code == 1
    assert report["checks"]["V1"] == {"passed": 1, "failed": 1}
    (failure,) = report["failures"]
    assert failure["check"] == "V1" and "MD5" in failure["message"]
    assert failure["position"]["sequenceNumber"].endswith("205378")
    assert report["records"] == 2  # only the good aggregate's user records


def test_truncated_protobuf_with_valid_md5(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = S1_DATA[4:-16]
    code, report = run_verify(capsys, tmp_path, event_with(with_md5(body[:-40]), S1_DATA))
    assert code == 1
    (failure,) = report["failures"]
    assert failure["check"] == "V1" and "past the end" in failure["message"]


def test_wrong_magic_is_a_plain_record_that_is_not_ion(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    wrong = b"\xf3\x89\x9a\xc3" + S1_DATA[4:]
    code, report = run_verify(capsys, tmp_path, event_with(wrong))
    assert code == 1
    (error,) = report["errors"]
    assert error["type"] == "MalformedIonError"
    assert error["position"]["subSequenceNumber"] == 0


@pytest.mark.parametrize(
    ("mutate", "error_type", "message"),
    [
        (lambda v: v["payload"]["revision"].pop("metadata"), "MalformedRecordError", "no 'metadata' field"),
        (lambda v: v.pop("qldbStreamArn"), "MalformedRecordError", "no 'qldbStreamArn'"),
        (lambda v: v.__setitem__("recordType", "SNAPSHOT"), "UnknownRecordTypeError", "SNAPSHOT"),
        (
            lambda v: v["payload"]["revision"].__setitem__("hash", v["payload"]["revision"]["hash"][:31]),
            "MalformedRecordError",
            "31 bytes long",
        ),
        (
            lambda v: v["payload"]["revision"]["metadata"].__setitem__("version", "zero"),
            "MalformedRecordError",
            "version must be a non-negative int",
        ),
    ],
)
def test_malformed_qldb_records(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, mutate: Any, error_type: str, message: str
) -> None:
    value = revision_value()
    mutate(value)
    code, report = run_verify(capsys, tmp_path, event_with(dumps(value), S1_DATA))
    assert code == 1
    (error,) = report["errors"]
    assert error["type"] == error_type
    assert message in error["message"]
    assert error["position"]["sequenceNumber"].endswith("205378")
    assert report["checks"]["V2"] == {"passed": 1, "failed": 0}  # the good aggregate still verified


def test_non_qldb_ion(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, report = run_verify(capsys, tmp_path, event_with(dumps([1, 2, 3]), dumps({"hello": "world"})))
    assert code == 1
    assert [e["type"] for e in report["errors"]] == ["MalformedRecordError", "MalformedRecordError"]


def test_unreadable_inputs_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["verify", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"qldbstream verify: {tmp_path / 'missing.json'}: no such file"]

    lines = tmp_path / "events.jsonl"
    lines.write_text(json.dumps(event_with(S1_DATA)) + "\n" + '{"Records": [\n')
    assert main(["verify", str(lines)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "events.jsonl line 2: not valid JSON" in err[0]

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\xff\xfe" * 10)
    assert main(["verify", str(garbage)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

    assert main(["verify"]) == 2
    assert "nothing to verify" in capsys.readouterr().err


# --- fuzzing: the decoder and verifier never crash or hang on any input --------------------------

POSITION = Position("fuzz", "shardId-000000000000", "1", 0)


def _decode_and_verify(data: bytes) -> None:
    try:
        record = decode_bytes(data, POSITION)
    except DecodeError as exc:
        assert exc.position == POSITION
        return
    try:
        Verifier().verify(record)
    except DecodeError as exc:  # e.g. a mutated symbol ID whose text is unknown: not hashable
        assert exc.position == POSITION


@settings(max_examples=1500, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_decoder_on_random_ion_bodies(body: bytes) -> None:
    _decode_and_verify(b"\xe0\x01\x00\xea" + body)


@settings(max_examples=1500, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(S1_USER), st.data())
def test_fuzz_decoder_on_mutated_real_records(record: bytes, data: st.DataObject) -> None:
    mutated = bytearray(record)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(mutated) // 2, len(mutated)))
    _decode_and_verify(bytes(mutated[:cut]))


def test_typed_errors_are_decode_errors() -> None:
    for cls in (MalformedIonError, MalformedRecordError, UnknownRecordTypeError):
        assert issubclass(cls, DecodeError)
