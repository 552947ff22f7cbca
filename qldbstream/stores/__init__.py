"""Shared state for several workers: the de-duplication store and the checkpoint store in DynamoDB.

The in-memory stores (:class:`~qldbstream.dedupe.InMemoryDedupeStore`,
:class:`~qldbstream.checkpoint.InMemoryCheckpointStore`) serve one process; the stores here
(:mod:`qldbstream.stores.dynamodb`) keep the same contracts on a DynamoDB table, so that any
number of workers, Lambda invocations and replays share one set of done marks, watermarks and
checkpoints. Configure the de-duplication store with ``dedupe_store = "dynamodb:<table>"``.
"""

from __future__ import annotations

__all__: list[str] = []
