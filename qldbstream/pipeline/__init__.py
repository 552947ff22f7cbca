"""The policy that drives the core stages over one shard's batch, for every runtime.

``batch`` (``Pipeline.process(shard, records) -> BatchResult``: the main flow, one stage per
module - ``decode_stage`` (deaggregate, decode, verify), ``gate_stage`` (admit, park, release),
``delivery`` (per-handler plan, retries, breaker, flush), ``checkpoint_rule``; ``dead_letters``
writes and seals every dead letter; ``settings`` and ``result`` are what goes in and comes out),
``shard_policy`` (what a runtime does after a batch) and ``runtime_duties`` (what every runtime
does around it: release a shard's handlers, flush metrics, gauge lag), ``reliability`` (one
retry loop, the circuit breaker, adaptive batch size, the error classification), ``dlq`` (the
dead-letter envelope and the queue port), ``checkpoint`` (the checkpoint port), ``stores`` (the
de-duplication and gate stores in memory, for one process). No boto3 here: the runtimes pass in
the ports' implementations, the tracer and the AWS transient-error rule from :mod:`qldbstream.io`.
"""
