"""The runtimes: thin adapters that feed Kinesis records to the pipeline and record checkpoints.

``aws_lambda`` (a Kinesis event source mapping batch → a partial batch response; the event's
records and the response in ``lambda_batch``, tumbling windows in ``lambda_windows``;
``powertools``: the same handler as a batch processor for Powertools' ``process_partial_response``,
which imports aws-lambda-powertools), ``worker``
(``qldbstream run``: polls every shard, checkpoints in DynamoDB; ``worker_options``,
``worker_report``, ``worker_shard``, ``worker_until``), ``kcl`` and ``kcl_daemon`` (a record
processor under the KCL MultiLangDaemon: the process in ``kcl``, the processor in ``kcl_processor``,
its checkpoints in ``kcl_checkpoint``; the daemon's properties and launcher in ``kcl_daemon``).
What every runtime decides after a batch is :mod:`qldbstream.pipeline.shard_policy`'s, what it owes
handlers and metrics :mod:`qldbstream.pipeline.runtime_duties`'s. ``replay`` (dead letters) and
``lambda_failures`` (Lambda's on-failure destinations), driven through the pipeline again;
``archive`` (``qldbstream run --source``): a bounded replay of saved Kinesis records or a journal
export through the handlers, with checkpoints.
"""
