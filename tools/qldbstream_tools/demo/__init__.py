"""The showcase: a simulated QLDB ledger through the standalone worker and every built-in handler,
on an embedded local AWS (moto in this process, on 127.0.0.1: no account, no Docker).

1. **simulate** a small bank's ledger (seeded): KPL aggregates the way QLDB writes them, a few
   duplicate deliveries, some reordering and **one tampered record** (``--tamper``);
2. start **moto** in-process and create what the worker and the handlers use: the Kinesis stream
   (N shards), a replica stream in ``us-west-2`` (same endpoint; moto keeps regions apart), DynamoDB
   tables (checkpoints, de-duplication, velocity results, compliance records), an SQS FIFO queue
   for fraud alerts and an SNS security topic (with an SQS inbox subscribed to read it back);
3. **put** the stream into Kinesis;
4. run the **standalone worker** (:meth:`Worker.from_app` on :meth:`App.from_env` with a
   ``QLDBSTREAM_*`` environment, :mod:`.options`) until caught up: checkpoints in DynamoDB, the
   DynamoDB de-duplication store, the directory DLQ, ``late_policy = deliver-late``, and the
   handlers ``audit, fraud, analytics, export, replication, workflow``. Its metrics are served by
   Prometheus on a free 127.0.0.1 port and **scraped over HTTP while it runs** (:mod:`.scrape`);
5. end the bounded run: the fraud handler and the velocity windows evaluate what still waits for
   the watermark;
6. **read back** everything (:mod:`.collect`): the DLQ, the audit log, the export's Parquet files,
   the velocity windows (Parquet and DynamoDB), the alerts in SQS, the SNS messages, the compliance
   table, the checkpoint table, and the replica (read and verified like ``qldbstream dr-check``);
7. **check** it against the simulator's ground truth (:mod:`.truth`, :mod:`.checks`) and build the
   report (:mod:`.report`). :attr:`DemoResult.ok` - and the command's exit status - says whether
   every check passed.

``run_demo(DemoOptions(...), progress)`` does it all; ``progress`` gets a :class:`DemoProgress` at
every step and after every poll of a shard while the worker runs.
"""

from qldbstream_tools.demo.checks import Check
from qldbstream_tools.demo.options import HANDLERS, DemoOptions
from qldbstream_tools.demo.runner import DemoProgress, DemoResult, Progress, run_demo, simulation

__all__ = [
    "HANDLERS",
    "Check",
    "DemoOptions",
    "DemoProgress",
    "DemoResult",
    "Progress",
    "run_demo",
    "simulation",
]
