"""``qldbstream verify`` on every real QLDB sample gives the results qldb-stream-format.md §7 reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qldbstream.cli import main

#: every test here runs with both scanners: pure Python and the compiled extension
pytestmark = pytest.mark.usefixtures("scanner")

FIXTURES = Path(__file__).parent.parent / "fixtures" / "qldb-real"
ALL_BLOCK_CHECKS = {"V1", "V2", "V3", "V4", "V5", "V7", "V8"}


def verify_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["verify", "--json", "--no-progress", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


def passed_checks(report: dict[str, Any]) -> set[str]:
    return {c for c, r in report["checks"].items() if r["passed"] and not r["failed"]}


@pytest.mark.parametrize(
    ("name", "records", "statements_skipped"),
    [
        ("simpledemo_streams-dynamodb_data.json", 2, 3),  # S1
        ("simpledemo_streams-es_data.json", 2, 3),  # S2
        ("simpledemo_7f20a42_streams_data1.json", 3, 3),  # S3: block + 2 revisions
        ("vces_streamhelper_event.json", 2, 1),  # S4
        ("vces_streamhelper_agg.b64", 2, 1),  # S4, the aggregate's data as base64
    ],
)
def test_real_aggregates_pass_every_checkable_check(
    capsys: pytest.CaptureFixture[str], name: str, records: int, statements_skipped: int
) -> None:
    code, report = verify_json(capsys, str(FIXTURES / name))
    assert code == 0
    assert report["ok"] is True
    assert report["records"] == records
    assert report["failures"] == [] and report["errors"] == []
    assert passed_checks(report) == ALL_BLOCK_CHECKS
    assert report["checks"]["V3"]["passed"] == records - 1
    # V6 is not checkable: these statements have parameters, whose values the stream does not carry
    assert report["checks"]["V6"] == {"passed": 0, "failed": 0, "skipped": statements_skipped}
    assert report["gaps"] == []


def test_s5_fails_v2_as_published_and_passes_with_firstname_restored(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    published = FIXTURES / "dmv_lambda_fixture.ion"
    code, report = verify_json(capsys, str(published))
    assert code == 1
    assert report["checks"]["V2"] == {"passed": 0, "failed": 1}
    (failure,) = report["failures"]
    assert failure["check"] == "V2"
    assert failure["documentId"] == "D35qd3e2prnJYmtKW6kok1"
    assert failure["version"] == 0 and failure["blockSequenceNo"] == 3
    assert failure["actual"] == "vJFOcsNRM14gsIBSEnwPhMVgRAWf/4EUW5gPYbtmDv0="
    assert failure["position"]["source"].endswith("dmv_lambda_fixture.ion record 2")
    # the block passes V4-V8, and V6 is checkable: the statement has no parameters
    assert {"V4", "V5", "V6", "V7", "V8", "V3"} <= passed_checks(report)

    restored = tmp_path / "dmv_restored.ion"
    restored.write_text(published.read_text().replace('FirstName: "Nova"', 'FirstName: "Testing new 600"'))
    code, report = verify_json(capsys, str(restored))
    assert code == 0
    assert report["checks"]["V2"] == {"passed": 1, "failed": 0}
    assert report["checks"]["V6"] == {"passed": 1, "failed": 0}


def test_s6_wallet_revisions_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify_json(capsys, str(FIXTURES / "wallet_revisions.ion"))
    assert code == 0
    assert report["checks"] == {"V2": {"passed": 2, "failed": 0}}
    # their block summaries are not in the input: reported as incomplete, not failed
    assert [g["kind"] for g in report["gaps"]] == ["missing-block-summary"] * 2


def test_s7_hand_edited_revision_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify_json(capsys, str(FIXTURES / "wallet_revision3.ion"))
    assert code == 1
    assert report["checks"]["V2"] == {"passed": 0, "failed": 1}


def test_s8_revision_passes_and_its_proof_folds_to_the_published_candidate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, report = verify_json(capsys, str(FIXTURES / "kvs_revision.json"))
    assert code == 0
    assert report["checks"]["V2"] == {"passed": 1, "failed": 0}
    (proof,) = report["proofs"]
    assert proof["computed"] == "pTMadOZSoX9Pi6k0iDerD5VmWF/7WgTTBqSKBIwIO0A="
    assert proof["passed"] is None  # no digest in the sample: nothing to compare with
    # ...and given that digest and its tip on the command line, V10 passes
    code, report = verify_json(
        capsys,
        str(FIXTURES / "kvs_revision.json"),
        "--digest",
        "pTMadOZSoX9Pi6k0iDerD5VmWF/7WgTTBqSKBIwIO0A=",
        "--digest-tip-address",
        '{strandId:"KLXwBc1ml2A4Yjc8jbFMX3",sequenceNo:500}',
    )
    assert code == 0
    assert report["checks"]["V10"] == {"passed": 1, "failed": 0}
    # a tip before the revision's block cannot cover it
    code, report = verify_json(
        capsys,
        str(FIXTURES / "kvs_revision.json"),
        "--digest",
        "pTMadOZSoX9Pi6k0iDerD5VmWF/7WgTTBqSKBIwIO0A=",
        "--digest-tip-address",
        '{strandId:"KLXwBc1ml2A4Yjc8jbFMX3",sequenceNo:428}',
    )
    assert code == 1
    assert "after the digest tip" in report["failures"][0]["message"]


def test_s9_published_proof_does_not_fold_to_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify_json(capsys, str(FIXTURES / "kvs_ledgerinfo.json"))
    assert code == 1
    assert report["checks"]["V10"] == {"passed": 0, "failed": 1}
    (failure,) = report["failures"]
    assert failure["expected"] == "KGuCkc79bsDfG9X0RjI7QgR/D4wlOarP/dKYnbnFjDo="
    assert failure["actual"].startswith("BAKYqdeY") and failure["actual"].endswith("8ww=")


def test_v10_from_command_line_options(capsys: pytest.CaptureFixture[str]) -> None:
    info = json.loads((FIXTURES / "kvs_ledgerinfo.json").read_text())
    args = [
        str(FIXTURES / "kvs_revision.json"),
        "--leaf-hash",
        info["RevisionHash"],
        "--proof",
        info["Proof"]["IonText"],
        "--digest",
        info["LedgerDigest"]["Digest"],
        "--digest-tip-address",
        info["LedgerDigest"]["DigestTipAddress"]["IonText"],
    ]
    code, report = verify_json(capsys, *args)
    assert code == 1
    assert report["checks"]["V10"] == {"passed": 0, "failed": 1}
    assert report["proofs"][0]["computed"].startswith("BAKYqdeY")


def test_all_real_samples_in_one_run(capsys: pytest.CaptureFixture[str]) -> None:
    names = [
        "simpledemo_streams-dynamodb_data.json",
        "simpledemo_streams-es_data.json",
        "simpledemo_7f20a42_streams_data1.json",
        "vces_streamhelper_event.json",
        "wallet_revisions.ion",
    ]
    code, report = verify_json(capsys, *(str(FIXTURES / n) for n in names))
    assert code == 0
    assert report["records"] == 11
    assert report["recordTypes"] == {"BLOCK_SUMMARY": 4, "REVISION_DETAILS": 7}
    assert report["checks"]["V2"] == {"passed": 7, "failed": 0}


def test_text_report_names_the_failure(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", "--no-progress", str(FIXTURES / "dmv_lambda_fixture.ion")])
    out = capsys.readouterr().out
    assert code == 1
    assert "VERIFICATION FAILED" in out
    assert "V2 document D35qd3e2prnJYmtKW6kok1 v0 block 3" in out
    assert "expected B1GNRTfdM/fNQf3HgxHkcOXKZ/uXNMfS41PMXCiYcRE=" in out
