"""A minimal amazon_kclpy v3 record processor, run by the real KCL MultiLangDaemon in integration tests.

The daemon starts one process per shard lease (``executableName = <python> <this file>``) and talks to
it over stdin/stdout, so this process must never print: stdout is the MultiLang protocol. Diagnostics go
to stderr, which the daemon copies into its own log.

For every record it appends one JSON line to the file named by ``KCL_SMOKE_OUTPUT``::

    {"event": "record", "worker": ..., "pid": ..., "shard": ..., "sequence_number": ...,
     "sub_sequence_number": ..., "partition_key": ..., "data": <base64>}

and one line per lifecycle event (``initialize``, ``checkpoint``, ``lease_lost``, ``shard_ended``,
``shutdown_requested``). Records are written (one ``write`` each, on an ``O_APPEND`` descriptor shared
safely by the per-shard processes) *before* the batch is checkpointed, so a record is either recorded or
delivered again: at least once. ``KCL_SMOKE_WORKER`` names the daemon in the lines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor

#: Tries for a checkpoint answered with ThrottlingException before giving up on this batch.
CHECKPOINT_TRIES = 5


def _log(message: str) -> None:
    sys.stderr.write(f"kcl_smoke_processor[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


class SmokeProcessor(processor.RecordProcessorBase):
    """Records every record and lifecycle event, checkpoints after each batch and at shard end."""

    def __init__(self, output_path: str, worker: str) -> None:
        self._fd = os.open(output_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._worker = worker
        self._shard = "?"

    def _emit(self, event: str, **fields: Any) -> None:
        line = {"event": event, "worker": self._worker, "pid": os.getpid(), "shard": self._shard, **fields}
        os.write(self._fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())

    def initialize(self, initialize_input: Any) -> None:
        self._shard = initialize_input.shard_id
        self._emit(
            "initialize",
            sequence_number=initialize_input.sequence_number,
            sub_sequence_number=initialize_input.sub_sequence_number,
        )

    def process_records(self, process_records_input: Any) -> None:
        records = process_records_input.records
        for record in records:
            self._emit(
                "record",
                sequence_number=record.sequence_number,
                sub_sequence_number=record.sub_sequence_number,
                partition_key=record.partition_key,
                data=record.data,  # base64, as the daemon sent it
            )
        if records:
            last = records[-1]
            self._checkpoint(
                process_records_input.checkpointer, last.sequence_number, last.sub_sequence_number
            )

    def lease_lost(self, lease_lost_input: Any) -> None:
        self._emit("lease_lost")

    def shard_ended(self, shard_ended_input: Any) -> None:
        self._emit("shard_ended")
        # Required: without it the daemon retries the shard end forever and never moves to the children.
        self._checkpoint(shard_ended_input.checkpointer, None, None)

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        self._emit("shutdown_requested")
        self._checkpoint(shutdown_requested_input.checkpointer, None, None)

    def _checkpoint(
        self, checkpointer: Any, sequence_number: str | None, sub_sequence_number: int | None
    ) -> None:
        for attempt in range(1, CHECKPOINT_TRIES + 1):
            try:
                checkpointer.checkpoint(sequence_number, sub_sequence_number)
            except kcl.CheckpointError as exc:
                error = str(exc)
                if error == "ThrottlingException" and attempt < CHECKPOINT_TRIES:
                    time.sleep(0.2 * attempt)
                    continue
                # ShutdownException: the lease is gone, another worker owns the shard now.
                # InvalidStateException: the lease table could not be written. Either way this batch
                # will be delivered again, which the at-least-once contract allows.
                _log(f"checkpoint at {sequence_number}/{sub_sequence_number} failed: {error}")
                self._emit("checkpoint_failed", sequence_number=sequence_number, error=error)
                return
            self._emit("checkpoint", sequence_number=sequence_number, sub_sequence_number=sub_sequence_number)
            return


def main() -> None:
    output = os.environ.get("KCL_SMOKE_OUTPUT")
    if not output:
        _log("KCL_SMOKE_OUTPUT is not set")
        sys.exit(2)
    worker = os.environ.get("KCL_SMOKE_WORKER", "worker")
    kcl.KCLProcess(SmokeProcessor(output, worker)).run()


if __name__ == "__main__":
    main()
