"""The policy that drives the core stages over one shard's batch, for every runtime.

``batch`` (``Pipeline.process(shard, records) -> BatchResult``: the checkpoint rule, handler
dispatch, dead letters), ``shard_policy`` (what a runtime does after a batch), ``reliability``
(one retry loop, the circuit breaker, adaptive batch size), ``dlq`` (the dead-letter envelope
and the queue port), ``checkpoint`` (the checkpoint port). No boto3 here: the runtimes pass in
the ports' implementations from :mod:`qldbstream.io`.
"""
