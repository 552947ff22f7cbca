"""Public API for plugins that keep the pipeline's bookkeeping themselves: checkpoints, dead letters.

Opt-in (``from qldbstream.api.ports import ...``). The pipeline records how far it got in each
shard in a :class:`CheckpointStore` and writes what it cannot process to a
:class:`DeadLetterQueue`; the runtimes pick the DynamoDB / SQS / directory implementations. A
plugin that owns its destination (the ``export`` handler keeps both next to its output, so that
one command resumes anywhere) implements these two Protocols over the types here:

* :class:`Checkpoint` and :func:`sequence_key` - a shard's position, and the one order of
  positions (sequence numbers compare as integers; a store must never move backwards);
* :class:`DeadLetter` - the dead-letter envelope (reason, stage, position, the record's bytes),
  with ``to_json`` / ``from_json``, which ``qldbstream replay-dlq`` reads back.
"""

from __future__ import annotations

from qldbstream.pipeline.checkpoint import Checkpoint, CheckpointStore, sequence_key
from qldbstream.pipeline.dlq import DeadLetter, DeadLetterQueue

__all__ = ["Checkpoint", "CheckpointStore", "DeadLetter", "DeadLetterQueue", "sequence_key"]
