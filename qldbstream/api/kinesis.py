"""Public API for handlers that write journal records to another Kinesis data stream.

Opt-in (``from qldbstream.api.kinesis import pack, put_records, PutEntry``). A stream copy must
look like the QLDB stream it copies - KPL aggregates that qldbstream (and the KCL) de-aggregate -
and must be written within Kinesis' limits with per-entry retries. qldbstream has both (its KPL
format is the one its de-aggregator reads; its writer is the one its own tests fill streams
with); they are public so that a handler (``replication``, or a fan-out of your own) does not
re-implement the KPL format or the ``PutRecords`` retry rules.

* :func:`pack` - user records ``(partition_key, explicit_hash_key or None, data)``, in order,
  into as few KPL aggregates (:class:`AggregatedRecord`) as fit in ``max_bytes`` each;
* :class:`PutEntry` and :func:`put_records` - write entries in as few ``PutRecords`` calls as the
  limits allow, retrying throttled calls and failed entries with backoff (:class:`PutResult`:
  where each entry went);
* :data:`MAX_RECORD_BYTES` - the Kinesis record limit (data plus partition key), 1 MiB.
"""

from __future__ import annotations

from qldbstream.core.aggregate import MAX_RECORD_BYTES, AggregatedRecord, pack
from qldbstream.io.kinesis_writer import PutEntry, PutResult, put_records

__all__ = ["MAX_RECORD_BYTES", "AggregatedRecord", "PutEntry", "PutResult", "pack", "put_records"]
