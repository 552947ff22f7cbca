"""Journal exports (ExportJournalToS3): the simulator writes them, ``qldbstream verify`` reads them.

The simulated ledger is written as an export in the three output formats; a clean export verifies
end to end (and by an independent recomputation with PyPI ionhash + amazon-ion); a tampered one
fails exactly the checks the simulator expects; problems with the export itself (a missing object,
objects out of order, overlapping or missing ranges, a block in the wrong object) are named, by
``verify`` as errors and by :meth:`JournalExport.blocks` as :class:`ExportError`. JSON exports
verify what survives the down-conversion and report the rest as not verifiable from JSON.
"""

from __future__ import annotations

import base64
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from amazon.ion import simpleion
from qldbstream_tools.simulate import SimulationConfig, Workload, parse_tamper, simulate
from qldbstream_tools.simulate.export import ExportFiles, write_export

from qldbstream.cli import main
from qldbstream.cli.verify_export import ExportRun, export_records, finish_export
from qldbstream.core.report import VerificationReport, verify_records
from qldbstream.io.journal_export import ExportError, open_export
from tests.support.oracles import import_ionhash, reference_dot

H = import_ionhash()
CONFIG = SimulationConfig(seed=21, workload=Workload(transactions=80, deletes=2, redactions=2))
SIM = simulate(CONFIG)
FORMATS = ["ION_TEXT", "ION_BINARY", "JSON"]


def export(
    tmp_path: Path, fmt: str = "ION_TEXT", tampers: tuple[str, ...] = (), per_object: int = 7
) -> ExportFiles:
    sim = (
        SIM
        if not tampers
        else simulate(
            SimulationConfig(CONFIG.seed, CONFIG.workload, tampers=tuple(parse_tamper(t) for t in tampers))
        )
    )
    return write_export(sim, tmp_path / "bucket", output_format=fmt, blocks_per_object=per_object)


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["verify", "--json", "--no-progress", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


# ---- clean exports ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_clean_export_verifies_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    files = export(tmp_path, fmt)
    blocks = len(SIM.journal.blocks)
    assert len(files.object_keys) == -(-blocks // 7)
    code, report = verify(capsys, str(tmp_path / "bucket"))
    assert code == 0, report["failures"][:3] or report["errors"][:3]
    checks = report["checks"]
    for check in ("V4", "V7", "V8"):
        assert checks[check] == {"passed": blocks, "failed": 0}
    assert checks["V9"] == {"passed": blocks - 1, "failed": 0}
    assert checks["V3"]["failed"] == 0 and checks["V3"]["passed"] == len(SIM.journal.revisions)
    assert report["gaps"] == [] and report["errors"] == []
    assert any("every object the completed manifest lists is present" in n for n in report["notes"])
    v2 = checks["V2"]
    if fmt == "JSON":
        # decimals, timestamps in the bank's documents: their Ion types did not survive
        assert v2["skipped"] > 0 and v2["failed"] == 0
        assert any(n.startswith("not verifiable from JSON: V2 of") for n in report["notes"])
    else:
        assert "skipped" not in v2
        assert v2["passed"] + checks["V2b"]["passed"] == len(SIM.journal.revisions)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_copy_of_the_export_prefix_resolves_the_manifest_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    files = export(tmp_path, fmt)
    code, report = verify(capsys, str(tmp_path / "bucket" / files.prefix))
    assert code == 0 and report["checks"]["V8"]["passed"] == len(SIM.journal.blocks)
    # and a manifest file names the export
    code, _ = verify(capsys, str(tmp_path / "bucket" / files.completed_key))
    assert code == 0


def test_the_reader_streams_blocks_in_journal_order_and_resumes(tmp_path: Path) -> None:
    files = export(tmp_path, "ION_BINARY")
    exp = open_export(str(tmp_path / "bucket"))
    assert (exp.export_id, exp.output_format, exp.strand_ids) == (
        files.export_id,
        "ION_BINARY",
        [files.strand_id],
    )
    objects = list(exp.objects())
    assert [o.key for o in objects] == list(files.object_keys)
    assert objects[0].first_seq == 1 and objects[0].last_seq == 7
    seqs = [b.sequence_no for b in exp.blocks()]
    assert seqs == [b.sequence_no for b in SIM.journal.blocks]
    resumed = list(exp.blocks(after=(files.strand_id, 10)))
    assert [b.sequence_no for b in resumed] == seqs[10:]
    first = resumed[0]
    assert (
        first.object_key == files.object_keys[1] and first.records[0].source == f"{first.object_key}#3 block"
    )


def test_independent_check_with_ionhash_and_amazon_ion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recompute revision hashes, entries, block hashes and the chain from the files, not our code."""
    files = export(tmp_path, "ION_TEXT")
    root = tmp_path / "bucket"
    manifest = simpleion.loads((root / files.completed_key).read_text())
    previous: bytes | None = None
    revisions = blocks = 0
    for key in manifest["keys"]:
        for block in simpleion.loads((root / key).read_text(), single_value=False):
            blocks += 1
            hashes = []
            for rev in block["revisions"]:
                hashes.append(bytes(rev["hash"]))
                if "metadata" not in rev:
                    continue  # a system revision: its hash alone
                if "data" in rev:
                    assert reference_dot(H(rev["metadata"]), H(rev["data"])) == bytes(rev["hash"])
                    revisions += 1
                elif "dataHash" in rev:  # redacted: the hash of the data it had
                    assert reference_dot(H(rev["metadata"]), bytes(rev["dataHash"])) == bytes(rev["hash"])
                    revisions += 1
            entries = [bytes(h) for h in block["entriesHashList"]]
            assert merkle(hashes) == entries[1]
            assert H(block["transactionInfo"]) == entries[3]
            assert merkle(entries) == bytes(block["entriesHash"])
            assert reference_dot(bytes(block["entriesHash"]), bytes(block["previousBlockHash"])) == bytes(
                block["blockHash"]
            )
            if previous is not None:
                assert bytes(block["previousBlockHash"]) == previous
            previous = bytes(block["blockHash"])
    assert blocks == len(SIM.journal.blocks)
    assert revisions == sum(1 for r in SIM.ledger.revisions if r.op != "delete")
    code, report = verify(capsys, str(root))
    assert code == 0 and report["checks"]["V8"]["passed"] == blocks


def merkle(hashes: list[bytes]) -> bytes:
    level = list(hashes)
    while len(level) > 1:
        nxt = [reference_dot(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0] if level else b""


# ---- tampered exports ---------------------------------------------------------------------------

PROBE_REVS = [
    r for r in SIM.ledger.revisions if r.table == "Transactions" and r.data is not None and not r.redacted
]
REV = f"revision={PROBE_REVS[2].document_id}@{PROBE_REVS[2].version}"
TAMPERS = [
    f"{REV}:data.amount",
    f"{REV}+rehash:data.amount",
    f"{REV}+rehash-block:metadata.version",
    "block=12:blockHash",
    "block=15:previousBlockHash",
    "block=18:entriesHash",
    "block=24:entriesHashList[1]",
    "block=30:transactionInfo.statements[0].statement",
    "block=33:transactionId",
]


def failure_keys(report: dict[str, Any]) -> set[tuple[Any, ...]]:
    out: set[tuple[Any, ...]] = set()
    for f in report["failures"]:
        if f["check"] == "V2":
            out.add((f["check"], f["blockSequenceNo"], f["documentId"], f["version"]))
        elif f["check"] == "V3":
            out.add((f["check"], f["blockSequenceNo"], f["documentId"]))
        else:
            out.add((f["check"], f["blockSequenceNo"]))
    return out


def expected_keys(sim: Any) -> set[tuple[Any, ...]]:
    out: set[tuple[Any, ...]] = set()
    for f in sim.expected.failures:
        if f.requires_parameters:
            continue
        if f.check == "V2":
            out.add((f.check, f.sequence_no, f.document_id, f.version))
        elif f.check == "V3":
            out.add((f.check, f.sequence_no, f.document_id))
        else:
            out.add((f.check, f.sequence_no))
    return out


@pytest.mark.parametrize("spec", TAMPERS)
@pytest.mark.parametrize("fmt", ["ION_TEXT", "ION_BINARY"])
def test_a_tampered_export_fails_exactly_the_expected_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, fmt: str
) -> None:
    export(tmp_path, fmt, (spec,))
    sim = simulate(SimulationConfig(CONFIG.seed, CONFIG.workload, tampers=(parse_tamper(spec),)))
    code, report = verify(capsys, str(tmp_path / "bucket"))
    assert code == 1
    assert failure_keys(report) == expected_keys(sim), sim.expected.tampers[0].to_json()


def test_json_a_data_tamper_is_not_verifiable_a_block_tamper_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = (f"{REV}:data.amount", "block=30:transactionInfo.statements[0].statement")
    export(tmp_path, "JSON", specs)
    sim = simulate(
        SimulationConfig(CONFIG.seed, CONFIG.workload, tampers=tuple(parse_tamper(t) for t in specs))
    )
    code, report = verify(capsys, str(tmp_path / "bucket"))
    assert code == 1
    # the tampered amount is a decimal: from JSON it cannot be told from a lost type
    expected = expected_keys(sim)
    assert ("V2", PROBE_REVS[2].sequence_no, PROBE_REVS[2].document_id, PROBE_REVS[2].version) in expected
    assert failure_keys(report) == {k for k in expected if k[0] != "V2"}
    assert {f["blockSequenceNo"] for f in report["failures"]} == {30}
    note = next(n for n in report["notes"] if n.startswith("not verifiable from JSON"))
    assert "JSON keeps no Ion type" in note


def test_simulate_writes_an_export_that_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--seed", "21", "--transactions", "20", "--export", str(tmp_path / "b")]
    argv += [
        "--export-format",
        "JSON",
        "--export-blocks-per-object",
        "5",
        "--expected",
        str(tmp_path / "e.json"),
    ]
    assert main(argv) == 0
    assert "journal export" in capsys.readouterr().err
    assert json.loads((tmp_path / "e.json").read_text())["failures"] == []
    names = sorted(p.name.split(".", 1)[-1] for p in (tmp_path / "b" / "journalExport").iterdir())
    # (the same seed: the same strand as SIM's) the two manifests and the data objects' folders
    assert names == sorted(["2024", "started.manifest", f"{SIM.journal.strand_id}.completed.manifest"])
    code, report = verify(capsys, str(tmp_path / "b"))
    assert code == 0 and report["checks"]["V8"]["failed"] == 0


def test_tampers_an_export_cannot_show_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for spec in (
        "kpl=3:md5",
        f"{REV}:tableInfo.tableName",
        "block=20:revisionSummaries[0].hash",
        f"{REV}:hash",
    ):
        code = main(
            ["simulate", "--seed", "21", "--transactions", "20", "--export", str(tmp_path), "--tamper", spec]
        )
        assert code == 2, spec
        assert "--tamper" in capsys.readouterr().err


# ---- problems with the export itself ------------------------------------------------------------


def _manifest_keys(root: Path, files: ExportFiles) -> list[str]:
    return [str(k) for k in simpleion.loads((root / files.completed_key).read_text())["keys"]]


def _rewrite(root: Path, files: ExportFiles, keys: list[str]) -> None:
    (root / files.completed_key).write_text(simpleion.dumps({"keys": keys}, binary=False))


def _problems(capsys: pytest.CaptureFixture[str], root: Path) -> tuple[int, set[str], dict[str, Any]]:
    code, report = verify(capsys, str(root))
    kinds = {e["type"].split("/", 1)[1] for e in report["errors"] if e["type"].startswith("ExportProblem/")}
    return code, kinds, report


def test_a_missing_object_is_named_and_the_gap_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = export(tmp_path)
    root = tmp_path / "bucket"
    (root / files.object_keys[2]).unlink()
    code, kinds, report = _problems(capsys, root)
    assert code == 1 and kinds == {"missing-object"}
    assert files.object_keys[2] in report["errors"][0]["message"]
    assert report["gaps"] == [
        {
            "kind": "missing-blocks",
            "strandId": files.strand_id,
            "fromSequenceNo": 15,
            "toSequenceNo": 21,
            "count": 7,
        }
    ]
    with pytest.raises(ExportError) as raised:
        list(open_export(str(root)).blocks())
    assert raised.value.problem.kind == "missing-object"


def test_objects_out_of_order_overlapping_or_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = export(tmp_path)
    root = tmp_path / "bucket"
    keys = _manifest_keys(root, files)
    _rewrite(root, files, [keys[1], keys[0], *keys[2:]])
    assert _problems(capsys, root)[1] == {"object-order"}
    _rewrite(root, files, [keys[0], keys[2], *keys[3:]])
    _, kinds, report = _problems(capsys, root)
    assert kinds == {"missing-range"} and "blocks 8-14" in report["errors"][0]["message"]
    _rewrite(root, files, [keys[0], keys[1], keys[1], *keys[2:]])
    assert _problems(capsys, root)[1] == {"overlap"}


def test_a_block_whose_address_disagrees_with_its_object_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = export(tmp_path)
    root = tmp_path / "bucket"
    keys = _manifest_keys(root, files)
    wrong = keys[1].replace(".8-14.", ".9-15.")
    (root / keys[1]).rename(root / wrong)
    _rewrite(root, files, [keys[0], wrong, *keys[2:]])
    code, kinds, report = _problems(capsys, root)
    assert code == 1 and "address-mismatch" in kinds
    assert any("block 8 where the object's name says block 9" in e["message"] for e in report["errors"])


def test_no_manifest_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = export(tmp_path)
    root = tmp_path / "bucket"
    for key in (files.started_key, files.completed_key):
        (root / key).unlink()
    assert main(["verify", "--no-progress", str(root)]) == 2
    assert "no journal export here" in capsys.readouterr().err
    with pytest.raises(Exception, match="no journal export here"):
        open_export(str(root))


def test_started_but_not_completed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = export(tmp_path)
    root = tmp_path / "bucket"
    (root / files.completed_key).unlink()
    code, kinds, _ = _problems(capsys, root)
    assert code == 1 and kinds == {"incomplete"}


def test_without_the_started_manifest_the_format_is_read_from_the_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = export(tmp_path, "JSON")
    root = tmp_path / "bucket"
    (root / files.started_key).unlink()
    # QLDB's default is ION_TEXT; the objects (.json, JSON Lines) say otherwise
    assert open_export(str(root)).output_format == "JSON"
    keys = _manifest_keys(root, files)
    renamed = [k.replace(".json", ".ion") for k in keys]
    for old, new in zip(keys, renamed, strict=True):
        (root / old).rename(root / new)
    _rewrite(root, files, renamed)
    code, report = verify(capsys, str(root))
    assert code == 0 and report["checks"]["V8"]["passed"] == len(SIM.journal.blocks)


# ---- V10 at the tip -----------------------------------------------------------------------------


def test_a_digest_anchors_the_tip_and_the_chain_below_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = export(tmp_path)
    tip = SIM.journal.blocks[-1]
    sibling = bytes(range(32))
    digest = reference_dot(tip.block_hash, sibling)
    proof = f"[{{{{{base64.b64encode(sibling).decode()}}}}}]"
    address = f'{{strandId:"{files.strand_id}",sequenceNo:{tip.sequence_no}}}'
    args = ["--digest", base64.b64encode(digest).decode(), "--digest-tip-address", address, "--proof", proof]
    code, report = verify(capsys, str(tmp_path / "bucket"), *args)
    assert code == 0 and report["checks"]["V10"] == {"passed": 1, "failed": 0}
    assert any(n.startswith("V9 + V10: every block of strand") for n in report["notes"])
    wrong = ["--digest", base64.b64encode(bytes(32)).decode(), *args[2:]]
    code, report = verify(capsys, str(tmp_path / "bucket"), *wrong)
    assert code == 1 and report["checks"]["V10"] == {"passed": 0, "failed": 1}
    # a digest without the proof of its tip cannot anchor anything: say what to give
    assert main(["verify", "--no-progress", str(tmp_path / "bucket"), *args[:4]]) == 2
    assert "GetBlock proof of its tip block" in capsys.readouterr().err


# ---- bounded memory -----------------------------------------------------------------------------


def _peak(tmp_path: Path, transactions: int) -> tuple[int, int]:
    sim = simulate(SimulationConfig(seed=3, workload=Workload(transactions=transactions)))
    write_export(sim, tmp_path, output_format="ION_BINARY", blocks_per_object=50)
    report = VerificationReport()
    runs: list[ExportRun] = []
    tracemalloc.start()
    try:
        verify_records(export_records(str(tmp_path), report, runs), report)
        finish_export(runs[0], report)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok and runs[0].blocks == len(sim.journal.blocks)
    return peak, runs[0].blocks


@pytest.mark.skipif(os.environ.get("QLDBSTREAM_SKIP_SLOW") == "1", reason="slow")
def test_verifying_an_export_is_bounded_in_memory(tmp_path: Path) -> None:
    small, small_blocks = _peak(tmp_path / "small", 300)
    large, large_blocks = _peak(tmp_path / "large", 1500)
    assert large_blocks >= 4 * small_blocks
    # one 50-block object at a time plus the verifier's bounded state: the peak does not grow
    # with the journal (a whole-journal load would be ~5x)
    assert large < small * 1.5, (small, large)
    assert large < 8 * 1024 * 1024  # measured: ~2.5 MB for 300 and for 1500 blocks
