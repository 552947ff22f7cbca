"""``qldbstream verify``: is this QLDB stream data authentic, record by record?"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from qldbstream.cli.verify_export import ExportRun, anchored_note, export_leaf, export_records, finish_export
from qldbstream.core.decode import BlockAddress
from qldbstream.core.errors import InputError, PoisonRecordError
from qldbstream.core.proof import parse_block_address, parse_proof, verify_proof
from qldbstream.core.records import KinesisRecord
from qldbstream.core.report import VerificationReport, proof_result, verify_records
from qldbstream.io.files import FileInput, read_file
from qldbstream.io.journal_export import is_export
from qldbstream.io.qldb_api import DigestInput, ProofInput, digest_argument

__all__ = ["register", "run"]

EXAMPLES = """\
inputs (recognised from their content):
  a Lambda Kinesis event (JSON) or JSON Lines of events; a JSON Lines dump of Kinesis records
  (data base64, sequenceNumber, ...); raw Ion records (binary or text); a KPL aggregate or lines
  of base64 record data; AWS CLI get-records output; a journal block (S3 export) or revision
  struct (history(), GetRevision's Ion text), alone or in a list, JSON or Ion; saved QLDB API
  output (GetRevision / GetBlock / GetDigest); a receipt (revision or hash + proof + digest + tip),
  also one level inside an application's own JSON; a journal export (ExportJournalToS3: a folder
  holding its manifests - a copy of the bucket or of the export's prefix - or s3://bucket/prefix,
  read with boto3; AWS_ENDPOINT_URL_S3 points it elsewhere); or a live stream with --stream.
  A GetDigest output given as an input (or --digest FILE) supplies the digest for the proofs.

examples:
  qldbstream verify event.json
  qldbstream verify --json records.jsonl > report.json
  qldbstream verify --stream my-ledger-stream --endpoint-url http://127.0.0.1:4568
  qldbstream verify --stream my-ledger-stream --from 2024-01-01T00:00:00Z
  qldbstream verify get-revision.json --digest get-digest.json
  qldbstream verify ./my-export/ --digest get-digest.json --proof "$(jq -r .Proof.IonText get-block.json)"
  qldbstream verify s3://my-bucket/journalExport --json > report.json
  qldbstream verify revision.ion --digest KGuCkc79bsDfG9X0RjI7QgR/D4wlOarP/dKYnbnFjDo= \\
      --digest-tip-address '{strandId:"KbW0e2QaN2uBUWzRYGeOCe",sequenceNo:46}' \\
      --proof '[{{MC+5lx76...}}, ...]'

exit status: 0 all verified, 1 a check failed or a record was unreadable, 2 the input could not be read.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="verify QLDB stream records: KPL, revision and block hashes, chain, proofs",
        description="Deaggregate, decode and verify QLDB journal stream records (checks V1-V10).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="FILE", help="input files ('-' reads standard input)")
    live = p.add_argument_group("live stream")
    live.add_argument(
        "--stream", metavar="NAME", help="read a Kinesis data stream, all shards, until caught up"
    )
    live.add_argument("--endpoint-url", metavar="URL", help="Kinesis endpoint (default: AWS for the region)")
    live.add_argument("--region", metavar="REGION", help="AWS region (default: from the environment)")
    live.add_argument(
        "--from",
        dest="start",
        metavar="TIMESTAMP",
        help="start at this time (ISO 8601) instead of TRIM_HORIZON",
    )
    v10 = p.add_argument_group("V10: anchor to a ledger digest (GetDigest + GetRevision/GetBlock proof)")
    v10.add_argument(
        "--digest",
        metavar="B64|FILE",
        help="the ledger digest (base64, or an Ion blob {{...}}), or a file holding a saved GetDigest output",
    )
    v10.add_argument(
        "--digest-tip-address", metavar="ION", help='the digest tip, e.g. {strandId:"...",sequenceNo:46}'
    )
    v10.add_argument("--proof", metavar="ION", help="the proof as Ion text: a list of blobs")
    v10.add_argument(
        "--leaf-hash",
        metavar="B64",
        help="revision or block hash to fold (default: the revision/block in the input)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on standard output")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress display")
    p.set_defaults(handler=run)


def _read(name: str) -> FileInput:
    if name != "-":
        return read_file(name)
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".stdin") as tmp:
        tmp.write(sys.stdin.buffer.read())
        tmp.flush()
        return read_file(tmp.name)


def _items(
    args: argparse.Namespace,
    report: VerificationReport,
    proofs: list[ProofInput],
    digests: list[DigestInput],
    runs: list[ExportRun],
) -> Iterator[KinesisRecord | PoisonRecordError]:
    # a folder is read as an export (open_export says so when it holds none)
    exports = [name for name in args.inputs if is_export(name) or os.path.isdir(name)]
    for name in args.inputs:
        if name in exports:
            continue
        got = _read(name)
        proofs.extend(got.proofs)
        digests.extend(got.digests)
        report.subjects.extend(got.subjects)
        if not (got.records or got.proofs or args.stream or len(args.inputs) > 1):
            raise InputError(
                f"{name}: a GetDigest output holds a digest, nothing to verify: give it with the "
                "GetRevision / GetBlock output or receipt it anchors, or as --digest FILE"
            )
        yield from got.records
    for name in exports:  # after the files: a GetDigest output among them names the tip
        yield from export_records(name, report, runs, _export_tip(args, digests))
    if args.stream:
        yield from _stream_items(args)


def _stream_items(args: argparse.Namespace) -> Iterator[KinesisRecord]:
    from qldbstream.io.clients import aws_client
    from qldbstream.io.kinesis_reader import TRIM_HORIZON, StartPosition, read_stream

    start = TRIM_HORIZON
    if args.start:
        try:
            when = datetime.fromisoformat(args.start.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"--from {args.start!r} is not an ISO 8601 timestamp") from None
        start = StartPosition("AT_TIMESTAMP", when)
    client = aws_client("kinesis", endpoint_url=args.endpoint_url, region_name=args.region)
    yield from read_stream(client, args.stream, start=start)


def _export_tip(args: argparse.Namespace, digests: list[DigestInput]) -> BlockAddress | None:
    """The digest's tip address, known before an export is walked (its block is V10's leaf)."""
    if args.digest_tip_address:
        return parse_block_address(args.digest_tip_address)
    given = _given_digest(args, digests)
    return given.tip if given else None


def _export_proof(
    args: argparse.Namespace, proofs: list[ProofInput], digests: list[DigestInput], runs: list[ExportRun]
) -> bool:
    """V10 for an export: the proof folds the export's own tip block; False when not this case."""
    if not runs or proofs or args.leaf_hash:
        return False
    given = _given_digest(args, digests)
    if given is None and not args.proof:
        return False
    if not args.proof:
        raise InputError(
            "a digest anchors an export through a GetBlock proof of its tip block: add --proof "
            "(aws qldb get-block --block-address TIP --digest-tip-address TIP) or give the saved "
            "GetBlock output as an input"
        )
    leaf = export_leaf(runs)
    if leaf is None:
        return False
    tip = leaf[1]
    proofs[:] = [
        ProofInput(
            f"{runs[0].export.location} block {tip.sequence_no}",
            leaf[0],
            tip,
            parse_proof(args.proof),
            given.digest if given else None,
            tip,
            "block",
        )
    ]
    return True


def _given_digest(args: argparse.Namespace, digests: list[DigestInput]) -> DigestInput | None:
    """``--digest`` (base64 or a GetDigest file), else the one GetDigest output among the inputs."""
    if args.digest:
        return digest_argument(args.digest)
    distinct = {(d.digest, d.tip) for d in digests}
    if len(distinct) > 1:
        names = ", ".join(d.source for d in digests)
        raise InputError(f"{len(distinct)} different digests in the inputs ({names}): give one, or --digest")
    return digests[0] if digests else None


def _cli_proof(
    args: argparse.Namespace, report: VerificationReport, proofs: list[ProofInput], digests: list[DigestInput]
) -> None:
    given_digest = _given_digest(args, [d for d in digests if not _carried(d, proofs)])
    given = [given_digest, args.proof, args.digest_tip_address, args.leaf_hash]
    if not any(given):
        return
    if not args.proof and not proofs:
        raise InputError(
            "--digest/--digest-tip-address need --proof (or an input that carries a Proof: "
            "a GetRevision / GetBlock output or a receipt)"
        )
    digest = given_digest.digest if given_digest else None
    tip = given_digest.tip if given_digest else None
    if args.digest_tip_address:
        tip = parse_block_address(args.digest_tip_address)
    if args.proof:
        proof = parse_proof(args.proof)
        if args.leaf_hash:
            leaf = base64.b64decode(args.leaf_hash)
            address = None
        elif proofs:
            leaf, address = proofs[0].leaf_hash, proofs[0].leaf_address
        elif len(report.leaves) == 1:
            leaf, address = report.leaves[0]
        else:
            raise InputError("--proof needs --leaf-hash unless the input holds exactly one revision or block")
        proofs[:] = [ProofInput("command line", leaf, address, proof, digest, tip, "revision")]
    else:
        proofs[:] = [
            ProofInput(
                p.source,
                p.leaf_hash,
                p.leaf_address,
                p.proof,
                digest or p.digest,
                tip or p.tip,
                p.what,
                p.document_id,
            )
            for p in proofs
        ]


def _carried(digest: DigestInput, proofs: list[ProofInput]) -> bool:
    """A digest that came inside a receipt next to its proof (already applied to it)."""
    return any(p.source == digest.source for p in proofs)


def _check_proofs(report: VerificationReport, proofs: list[ProofInput]) -> None:
    for p in proofs:
        if p.digest is None:
            from qldbstream.core.qldb_hash import fold_proof

            report.proofs.append(
                proof_result(
                    p.source,
                    None,
                    fold_proof(p.leaf_hash, p.proof),
                    None,
                    "no digest given: pass --digest to check it against one",
                )
            )
            continue
        result = verify_proof(p.leaf_hash, p.proof, p.digest, p.leaf_address, p.tip)
        report.verifier.tally.add("V10", result.passed)
        report.proofs.append(proof_result(p.source, result.passed, result.computed, p.digest, result.message))
        if not result.passed:
            from qldbstream.core.records import Position
            from qldbstream.core.verify import Failure

            report.add_failures(
                [
                    Failure(
                        "V10",
                        Position(p.source),
                        result.message,
                        p.document_id,
                        None,
                        p.leaf_address.sequence_no if p.leaf_address else None,
                        base64.b64encode(p.digest).decode(),
                        base64.b64encode(result.computed).decode(),
                    )
                ]
            )


def run(args: argparse.Namespace) -> int:
    if not args.inputs and not args.stream:
        raise InputError("nothing to verify: give input files, an export (DIR or s3://) or --stream NAME")
    report = VerificationReport()
    proofs: list[ProofInput] = []
    digests: list[DigestInput] = []
    runs: list[ExportRun] = []
    from qldbstream.extras import require, stderr_console

    if not args.json:  # said before the work, not after it
        require("rich", "the report (--json needs none)")
    err = None if args.no_progress else stderr_console("the progress display (--no-progress for none)")
    if err is not None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("verifying", total=None)

            def tick(n: int) -> None:
                progress.update(task, description=f"verified {report.records} user records", advance=n)

            verify_records(_items(args, report, proofs, digests, runs), report, tick)
    else:
        verify_records(_items(args, report, proofs, digests, runs), report)
    for export_run in runs:
        finish_export(export_run, report)
    exported = _export_proof(args, proofs, digests, runs)
    if not exported:
        _cli_proof(args, report, proofs, digests)
    _check_proofs(report, proofs)
    report.finish()
    if exported and report.proofs and report.proofs[0]["passed"]:
        anchored_note(runs[0], report)
    if args.json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from rich.console import Console

        from qldbstream.cli.verify_render import render_report

        render_report(report, Console())
    return 0 if report.ok else 1
