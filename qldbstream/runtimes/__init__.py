"""The runtimes: thin adapters that feed Kinesis records to the pipeline and record checkpoints.

``aws_lambda`` (a Kinesis event source mapping batch → a partial batch response), ``worker``
(``qldbstream run``: polls every shard, checkpoints in DynamoDB), ``kcl`` and ``kcl_daemon``
(a record processor under the KCL MultiLangDaemon), ``replay`` (dead letters) and
``lambda_failures`` (Lambda's on-failure destinations), driven through the pipeline again.
"""
