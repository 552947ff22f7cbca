"""The edges: everything that talks to the outside world.

Kinesis (``kinesis_reader``, ``shards``, ``kinesis_writer``), Lambda events (``lambda_event``),
files and saved QLDB API output (``files``; ``archive_shapes`` recognises every saved shape,
``journal_values`` turns bare blocks and revisions into stream records, ``journal_export``
reads a whole ExportJournalToS3 export block by block, from a folder or S3 (``export_store``); ``qldb_api``,
``anchors``), archives as bounded replay sources (``archive_sources``: saved Kinesis records, an
export), a checkpoint file (``checkpoint_file``), dead-letter queues (``dlq``: SQS, a directory), sealers (``sealers``: AES, KMS), DynamoDB stores
(``dedupe_dynamodb``, ``checkpoint_dynamodb``, ``gate_dynamodb`` with its items in
``gate_items``; their table calls in ``dynamodb_table``), boto3 clients (``clients``),
metrics backends (``metrics``), logs (``logs``, ``masking_logs``) and tracing (``tracing``).
``aws_errors`` says which AWS errors are transient: the application passes its rule to the
pipeline (``App.pipeline``), whose ``classify`` knows no AWS.
"""
