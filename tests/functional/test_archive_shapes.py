"""``qldbstream verify FILE`` on every archived QLDB shape (tests/fixtures/archive-shapes, README.md):
exit codes, checks, what the report says each input established, tampered variants, and the one
line an unreadable input gets (exit 2)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from amazon.ion import simpleion

from qldbstream.cli import main

#: every test here runs with both scanners: pure Python and the compiled extension
pytestmark = pytest.mark.usefixtures("scanner")

SHAPES = Path(__file__).parent.parent / "fixtures" / "archive-shapes"
DIGEST = json.loads((SHAPES / "get-digest.json").read_text())


def verify_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, dict[str, Any]]:
    code = main(["verify", "--json", "--no-progress", *map(str, args)])
    return code, json.loads(capsys.readouterr().out)


def verify_text(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = main(["verify", "--no-progress", *map(str, args)])
    return code, capsys.readouterr().out


def refused(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """Exit 2 with exactly one line on standard error; returns it."""
    code = main(["verify", "--json", "--no-progress", *map(str, args)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def counts(report: dict[str, Any], check: str) -> tuple[int, int]:
    entry = report["checks"].get(check, {"passed": 0, "failed": 0})
    return entry["passed"], entry["failed"]


def only_input(report: dict[str, Any]) -> dict[str, Any]:
    (found,) = report["inputs"]
    assert isinstance(found, dict)
    return found


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# --- GetRevision / GetBlock / GetDigest -----------------------------------------------------


def test_get_revision_alone_verifies_v2_and_says_v10_needs_a_digest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, report = verify_json(capsys, SHAPES / "get-revision.json")
    assert code == 0
    assert counts(report, "V2") == (1, 0)
    assert report["proofs"][0]["passed"] is None
    found = only_input(report)
    assert found["shape"] == "GetRevision output"
    assert any(line.startswith("V2:") for line in found["established"])
    assert any("V10 not checked" in line for line in found["notEstablished"])


@pytest.mark.parametrize("how", ["--digest FILE", "input file", "--digest B64 + tip"])
def test_get_revision_anchored_to_a_saved_get_digest(capsys: pytest.CaptureFixture[str], how: str) -> None:
    args: list[str | Path] = [SHAPES / "get-revision.json"]
    if how == "--digest FILE":
        args += ["--digest", SHAPES / "get-digest.json"]
    elif how == "input file":
        args += [SHAPES / "get-digest.json"]
    else:
        args += ["--digest", DIGEST["Digest"], "--digest-tip-address", DIGEST["DigestTipAddress"]["IonText"]]
    code, report = verify_json(capsys, *args)
    assert code == 0
    assert counts(report, "V10") == (1, 0)
    established = only_input(report)["established"]
    assert "V2 + V10: this data is what the ledger held, as of that digest" in established


def test_get_block_with_digest_checks_v2_v4_to_v8_and_v10(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify_json(capsys, SHAPES / "get-block.json", "--digest", SHAPES / "get-digest.json")
    assert code == 0
    for check in ("V4", "V5", "V7", "V8", "V10"):
        assert counts(report, check)[1] == 0 and counts(report, check)[0] >= 1, check
    assert counts(report, "V2") == (2, 0)
    assert counts(report, "V3")[1] == 0
    assert only_input(report)["shape"] == "GetBlock output"


def test_get_digest_alone_is_refused_with_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, SHAPES / "get-digest.json")
    assert "GetDigest output holds a digest" in line and "--digest FILE" in line


def test_digest_option_given_a_file_that_is_no_get_digest(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, SHAPES / "get-revision.json", "--digest", SHAPES / "history.json")
    assert "expected a saved GetDigest output" in line


def test_a_digest_tip_before_the_block_fails_v10(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    early = {
        "Digest": DIGEST["Digest"],
        "DigestTipAddress": {
            "IonText": DIGEST["DigestTipAddress"]["IonText"].replace("sequenceNo:9", "sequenceNo:5")
        },
    }
    path = write(tmp_path, "early-digest.json", json.dumps(early))
    code, report = verify_json(capsys, SHAPES / "get-revision.json", "--digest", path)
    assert code == 1
    assert counts(report, "V10") == (0, 1)
    assert "after the digest tip" in report["proofs"][0]["message"]


def test_tampered_proof_fails_v10(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = json.loads((SHAPES / "get-revision.json").read_text())
    proof = simpleion.loads(doc["Proof"]["IonText"])
    proof[0] = bytes(32)
    doc["Proof"]["IonText"] = simpleion.dumps(list(proof), binary=False, omit_version_marker=True)
    code, report = verify_json(capsys, write(tmp_path, "r.json", json.dumps(doc)), SHAPES / "get-digest.json")
    assert code == 1
    assert counts(report, "V10") == (0, 1)
    assert counts(report, "V2") == (1, 0)
    assert any(line.startswith("V10 FAILED") for line in only_input(report)["established"])


def test_tampered_revision_data_fails_v2_but_v10_still_anchors_the_hash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = json.loads((SHAPES / "get-revision.json").read_text())
    doc["Revision"]["IonText"] = doc["Revision"]["IonText"].replace("balance:358.05", "balance:9358.05")
    code, report = verify_json(capsys, write(tmp_path, "r.json", json.dumps(doc)), SHAPES / "get-digest.json")
    assert code == 1
    assert counts(report, "V2") == (0, 1)
    assert counts(report, "V10") == (1, 0)  # the hash is in the ledger; the data is not what it covers
    established = only_input(report)["established"]
    assert any(line.startswith("V2 FAILED") for line in established)
    assert not any(line.startswith("V2 + V10") for line in established)


# --- bare journal values ----------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_bare_block_ion(capsys: pytest.CaptureFixture[str], tmp_path: Path, binary: bool) -> None:
    path = SHAPES / "block.ion"
    if binary:
        path = write(tmp_path, "block.10n", simpleion.dumps(simpleion.loads(path.read_text()), binary=True))
    code, report = verify_json(capsys, path)
    assert code == 0
    assert report["recordTypes"] == {"BLOCK_SUMMARY": 1, "REVISION_DETAILS": 2}
    for check in ("V2", "V3", "V4", "V5", "V7", "V8"):
        assert counts(report, check)[1] == 0 and counts(report, check)[0] >= 1, check
    found = only_input(report)
    assert found["shape"] == "journal block"
    assert any(line.startswith("no proof") for line in found["notEstablished"])


def test_journal_export_of_several_blocks_checks_the_chain(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify_json(capsys, SHAPES / "journal-export.ion")
    assert code == 0
    assert report["recordTypes"]["BLOCK_SUMMARY"] == 9
    assert counts(report, "V9") == (8, 0)
    assert report["gaps"] == []


def test_tampered_block_fails_v8(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    block = simpleion.loads((SHAPES / "block.ion").read_text())
    block["entriesHash"] = bytes(32)
    code, report = verify_json(capsys, write(tmp_path, "b.ion", simpleion.dumps(block, binary=False)))
    assert code == 1
    assert {f["check"] for f in report["failures"]} >= {"V7", "V8"}
    assert any("FAILED" in line for line in only_input(report)["established"])


@pytest.mark.parametrize("binary", [False, True])
def test_bare_revision_ion(capsys: pytest.CaptureFixture[str], tmp_path: Path, binary: bool) -> None:
    path = SHAPES / "revision.ion"
    if binary:
        path = write(
            tmp_path, "revision.10n", simpleion.dumps(simpleion.loads(path.read_text()), binary=True)
        )
    code, report = verify_json(capsys, path)
    assert code == 0
    assert counts(report, "V2") == (1, 0)
    assert only_input(report)["shape"] == "revision"


def test_tampered_bare_revision_fails_v2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = (SHAPES / "revision.ion").read_text().replace("balance:358.05", "balance:358.06")
    code, report = verify_json(capsys, write(tmp_path, "r.ion", text))
    assert code == 1
    assert counts(report, "V2") == (0, 1)
    assert report["failures"][0]["check"] == "V2"


def test_history_without_block_addresses_verifies_v2_without_v3(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify_json(capsys, SHAPES / "history-no-address.ion")
    assert code == 0
    assert counts(report, "V2") == (5, 0)
    assert "V3" not in report["checks"]
    assert report["gaps"] == []  # no block to miss: the revisions do not name one
    assert len(report["inputs"]) == 5
    for found in report["inputs"]:
        assert found["shape"] == "history() revision"
        assert any("without blockAddress" in line for line in found["notEstablished"])


def test_history_json_real_wallet_revisions(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify_json(capsys, SHAPES / "history.json")
    assert code == 0
    assert counts(report, "V2") == (2, 0)
    assert all(any("read from JSON" in line for line in f["notEstablished"]) for f in report["inputs"])


def test_one_json_revision_without_block_address(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (first, _) = json.loads((SHAPES / "history.json").read_text())
    del first["blockAddress"]
    code, report = verify_json(capsys, write(tmp_path, "rev.json", json.dumps(first)))
    assert code == 0
    assert counts(report, "V2") == (1, 0)
    assert report["gaps"] == []


# --- receipts ----------------------------------------------------------------------------------


def test_hash_receipt_inside_application_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify_json(capsys, SHAPES / "receipt-in-app.json")
    assert code == 0
    assert counts(report, "V10") == (1, 0)
    found = only_input(report)
    assert found["usedObject"] == "ledgerMetadata"
    assert found["shape"] == "receipt"
    assert any("V10 can anchor only the hash" in line for line in found["notEstablished"])


def test_text_report_names_the_object_used(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = verify_text(capsys, SHAPES / "receipt-in-app.json")
    assert code == 0
    assert "used the object 'ledgerMetadata'" in out
    assert "V10 can anchor only the hash" in out


def test_receipt_with_revision_inside_application_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify_json(capsys, SHAPES / "receipt-with-revision.json")
    assert code == 0
    assert counts(report, "V2") == (1, 0)
    assert counts(report, "V10") == (1, 0)
    assert only_input(report)["usedObject"] == "qldb"


def test_receipt_with_a_wrong_digest_fails_v10(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = json.loads((SHAPES / "receipt-in-app.json").read_text())
    doc["ledgerMetadata"]["digest"] = base64.b64encode(bytes(32)).decode()
    code, report = verify_json(capsys, write(tmp_path, "receipt.json", json.dumps(doc)))
    assert code == 1
    assert counts(report, "V10") == (0, 1)


def test_receipt_proof_without_anything_to_prove(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = {
        "app": {"proof": json.loads((SHAPES / "receipt-in-app.json").read_text())["ledgerMetadata"]["proof"]}
    }
    line = refused(capsys, write(tmp_path, "receipt.json", json.dumps(doc)))
    assert "a proof without the revision, block or hash it proves" in line


# --- Kinesis shapes and unreadable input -------------------------------------------------------


def test_aws_cli_get_records_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify_json(capsys, SHAPES / "get-records.json")
    assert code == 0
    assert report["kinesisRecords"] == 8
    assert report["errors"] == []


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("app.json", json.dumps({"orderId": 1, "meta": {"foo": "bar"}})),
        ("numbers.json", "[1, 2, 3]"),
        ("value.ion", "{a: 1, b: 2}"),
        ("string.ion", '"just a string" 12'),
    ],
)
def test_unknown_shape_is_one_line_saying_what_was_expected(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, content: str
) -> None:
    line = refused(capsys, write(tmp_path, name, content))
    assert "unknown shape" in line and "expected" in line and "journal block or revision" in line
    assert "qldbStreamArn" not in line and "base64 'data'" not in line


def _as_json(value: Any) -> Any:
    """An Ion value written as JSON: blobs base64, timestamps ISO 8601 (as JSON-minded tools do)."""
    from amazon.ion.core import Timestamp

    if isinstance(value, Mapping):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Timestamp):
        return simpleion.dumps(value, binary=False, omit_version_marker=True)
    return value


def test_json_lines_export_of_blocks(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A JSON journal export is JSON Lines, a block a line; DDL blocks hold only strings and hashes,
    so they survive the trip through JSON and every block check passes."""
    blocks = simpleion.loads((SHAPES / "journal-export.ion").read_text(), single_value=False)[:3]
    lines = "\n".join(json.dumps(_as_json(b)) for b in blocks)
    code, report = verify_json(capsys, write(tmp_path, "export.jsonl", lines))
    assert code == 0
    assert report["recordTypes"] == {"BLOCK_SUMMARY": 3}
    for check in ("V4", "V5", "V7", "V8"):
        assert counts(report, check) == (3, 0), check
    assert counts(report, "V9") == (2, 0)
    assert [f["shape"] for f in report["inputs"]] == ["journal block"] * 3


def test_sdk_response_with_response_metadata_is_still_a_get_revision(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = json.loads((SHAPES / "get-revision.json").read_text())
    doc["ResponseMetadata"] = {"RequestId": "5f1c…", "HTTPStatusCode": 200}
    code, report = verify_json(
        capsys, write(tmp_path, "boto3.json", json.dumps(doc)), SHAPES / "get-digest.json"
    )
    assert code == 0
    assert only_input(report)["shape"] == "GetRevision output"
    assert counts(report, "V10") == (1, 0)


def test_bare_json_revision_inside_application_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (_, second) = json.loads((SHAPES / "history.json").read_text())
    doc = {"wallet": "user1", "auditCopy": second}
    code, report = verify_json(capsys, write(tmp_path, "app.json", json.dumps(doc)))
    assert code == 0
    assert counts(report, "V2") == (1, 0)
    found = only_input(report)
    assert (found["shape"], found["usedObject"]) == ("revision", "auditCopy")


def test_inspect_refuses_a_file_without_records(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["inspect", str(SHAPES / "receipt-in-app.json")])
    captured = capsys.readouterr()
    assert code == 2
    assert "check it with qldbstream verify" in captured.err
