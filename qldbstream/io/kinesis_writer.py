"""Write records to a Kinesis data stream, and create the stream to write to.

:func:`put_records` packs entries into ``PutRecords`` calls within the Kinesis limits (500 records and
5 MiB per call, 1 MiB per record counting the partition key), retries *only the entries that failed*
with backoff and jitter, and returns one :class:`PutResult` per entry, in input order.

What happens next on errors:

* an entry over the limits → :class:`ValueError` before anything is sent (a caller bug);
* entries still failing after ``max_attempts`` → :class:`~qldbstream.core.errors.RetryableError` naming how
  many failed and why; the entries before them were written (Kinesis is at-least-once: writing the
  whole input again duplicates those, which readers de-duplicate by sequence number);
* the stream does not exist → :class:`~qldbstream.core.errors.InputError`.

Retrying only the failed entries can put a record of one partition key after a later record of the same
key that succeeded at the first attempt (the KPL has the same property). A caller that needs strict
per-key order writes one record per partition key per call.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from qldbstream.core.errors import InputError, RetryableError
from qldbstream.io.aws_errors import KINESIS_THROTTLING_CODES, error_code
from qldbstream.io.kinesis_reader import kinesis_retry
from qldbstream.pipeline.reliability import RetryPolicy, retry

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import PutRecordsRequestEntryTypeDef

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_RECORDS",
    "MAX_PARTITION_KEY_CHARS",
    "MAX_RECORD_BYTES",
    "PutEntry",
    "PutResult",
    "create_stream",
    "put_records",
]

MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 5 * 1024 * 1024
#: Data plus the UTF-8 partition key.
MAX_RECORD_BYTES = 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256


@dataclass(frozen=True, slots=True)
class PutEntry:
    """One record to write. ``explicit_hash_key`` (a decimal 128-bit integer) overrides the key's hash."""

    data: bytes
    partition_key: str
    explicit_hash_key: str | None = None

    @property
    def size(self) -> int:
        """The bytes Kinesis counts against its limits: data plus the UTF-8 partition key."""
        return len(self.data) + len(self.partition_key.encode())


@dataclass(frozen=True, slots=True)
class PutResult:
    """Where Kinesis stored one entry."""

    shard_id: str
    sequence_number: str


def put_records(
    client: KinesisClient,
    stream_name: str,
    entries: Iterable[PutEntry],
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_attempts: int = 8,
    rng: random.Random | None = None,
) -> list[PutResult]:
    """Write ``entries`` in as few ``PutRecords`` calls as the limits allow; results in input order.

    Each call is attempted up to ``max_attempts`` times: a throttled call is repeated whole, a call
    with per-entry failures (``FailedRecordCount``) is repeated with only the failed entries, after
    a backoff (see :func:`~qldbstream.io.kinesis_reader.kinesis_retry`; ``sleep`` and ``rng`` are injected).

    Raises :class:`ValueError` for an entry over the limits (nothing is sent),
    :class:`~qldbstream.core.errors.RetryableError` when entries still fail after ``max_attempts``, and
    :class:`~qldbstream.core.errors.InputError` when the stream does not exist.
    """
    items = list(entries)
    for index, entry in enumerate(items):
        _check(index, entry)
    policy = kinesis_retry(max_attempts, rng)
    results: list[PutResult] = []
    for batch in _batches(items):
        results.extend(_put_batch(client, stream_name, batch, policy, sleep, written=len(results)))
    return results


def _check(index: int, entry: PutEntry) -> None:
    if not 1 <= len(entry.partition_key) <= MAX_PARTITION_KEY_CHARS:
        raise ValueError(
            f"entry {index}: the partition key must have 1 to {MAX_PARTITION_KEY_CHARS} characters, "
            f"not {len(entry.partition_key)}"
        )
    if entry.size > MAX_RECORD_BYTES:
        raise ValueError(
            f"entry {index}: {entry.size} bytes (data + partition key) is over the Kinesis record "
            f"limit of {MAX_RECORD_BYTES} bytes"
        )


def _batches(items: list[PutEntry]) -> Iterator[list[PutEntry]]:
    """``items`` in order, grouped greedily into calls of ≤ 500 records and ≤ 5 MiB."""
    batch: list[PutEntry] = []
    size = 0
    for entry in items:
        if batch and (len(batch) == MAX_BATCH_RECORDS or size + entry.size > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.size
    if batch:
        yield batch


class _StillFailing(Exception):
    """Some entries of a ``PutRecords`` call failed (or the whole call was throttled)."""

    def __init__(self, failures: Counter[str]) -> None:
        super().__init__(dict(failures))
        self.failures = failures


def _put_batch(
    client: KinesisClient,
    stream_name: str,
    batch: list[PutEntry],
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    *,
    written: int,
) -> list[PutResult]:
    """One ``PutRecords`` call and its retries of the failed entries; results in ``batch`` order."""
    results: list[PutResult | None] = [None] * len(batch)
    pending = list(range(len(batch)))

    def attempt() -> list[PutResult]:
        nonlocal pending
        request = [_request_entry(batch[i]) for i in pending]
        try:
            response = client.put_records(StreamName=stream_name, Records=request)
        except ClientError as exc:
            code = error_code(exc)
            if code == "ResourceNotFoundException":
                raise InputError(
                    f"stream {stream_name} does not exist at {client.meta.endpoint_url}"
                ) from exc
            if code not in KINESIS_THROTTLING_CODES:
                raise
            raise _StillFailing(Counter({code: len(pending)})) from exc
        failed: list[int] = []
        failures: Counter[str] = Counter()
        for index, outcome in zip(pending, response["Records"], strict=True):
            if outcome.get("ErrorCode"):
                failed.append(index)
                failures[outcome["ErrorCode"]] += 1
            else:
                results[index] = PutResult(outcome["ShardId"], outcome["SequenceNumber"])
        pending = failed
        if pending:
            raise _StillFailing(failures)
        return [r for r in results if r is not None]

    def give_up(exc: Exception, attempts: int) -> RetryableError:
        assert isinstance(exc, _StillFailing)
        reasons = ", ".join(f"{code} × {count}" for code, count in exc.failures.most_common())
        done = written + len(batch) - len(pending)
        return RetryableError(
            f"stream {stream_name}: {len(pending)} records still failed after {attempts} "
            f"PutRecords attempts ({reasons}); {done} other records were written",
            retry_after=policy.max_delay,
        )

    return retry(
        attempt, policy, retryable=lambda exc: isinstance(exc, _StillFailing), sleep=sleep, give_up=give_up
    )


def _request_entry(entry: PutEntry) -> PutRecordsRequestEntryTypeDef:
    request: PutRecordsRequestEntryTypeDef = {"Data": entry.data, "PartitionKey": entry.partition_key}
    if entry.explicit_hash_key is not None:
        request["ExplicitHashKey"] = entry.explicit_hash_key
    return request


def create_stream(
    client: KinesisClient,
    name: str,
    shard_count: int,
    *,
    exist_ok: bool = False,
    timeout: float = 60.0,
    poll_interval: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Create a provisioned stream of ``shard_count`` shards, wait until it is ACTIVE; return its ARN.

    kinesis-local takes ~0.8 s to go CREATING → ACTIVE, moto is immediate, Kinesis takes seconds.
    With ``exist_ok`` an existing stream is waited for instead of raising ``ResourceInUseException``.
    Raises :class:`~qldbstream.core.errors.RetryableError` when the stream is not ACTIVE within
    ``timeout`` seconds (counted in polls, so a fake ``sleep`` works).
    """
    try:
        client.create_stream(
            StreamName=name, ShardCount=shard_count, StreamModeDetails={"StreamMode": "PROVISIONED"}
        )
    except ClientError as exc:
        if not (exist_ok and error_code(exc) == "ResourceInUseException"):
            raise
    describe = partial(client.describe_stream_summary, StreamName=name)
    status = "CREATING"
    for _ in range(max(1, round(timeout / poll_interval))):
        try:
            summary = describe()["StreamDescriptionSummary"]
        except ClientError as exc:  # just created: some servers lag before they know the stream
            if error_code(exc) != "ResourceNotFoundException":
                raise
        else:
            status = summary["StreamStatus"]
            if status == "ACTIVE":
                return summary["StreamARN"]
        sleep(poll_interval)
    raise RetryableError(f"stream {name} is still {status} after {timeout:g} s", retry_after=poll_interval)
