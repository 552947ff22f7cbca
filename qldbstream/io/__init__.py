"""The edges: everything that talks to the outside world.

- Kinesis: ``kinesis_reader``, ``shards``, ``kinesis_writer``; Lambda events: ``lambda_event``.
- Saved data: ``files`` (saved records of every shape), ``archive_shapes`` (which saved shape a
  value is), ``journal_values`` (bare blocks and revisions as stream records), ``journal_export``
  with ``export_store`` (an ExportJournalToS3 export, block by block, from a folder or S3),
  ``archive_sources`` (archives as bounded replay sources), ``qldb_api`` and ``anchors``
  (GetRevision / GetBlock / GetDigest outputs, receipts, digests).
- State: ``dedupe_dynamodb``, ``checkpoint_dynamodb``, ``gate_dynamodb`` (its items in
  ``gate_items``; their table calls in ``dynamodb_table``), ``checkpoint_file``.
- Dead letters and secrets: ``dlq`` (SQS, a directory), ``sealers`` (AES, KMS).
- AWS plumbing: ``clients`` (boto3 clients), ``aws_errors`` (which AWS errors are transient: the
  application passes its rule to the pipeline, whose ``classify`` knows no AWS).
- Observability: ``metrics`` (backends), ``logs``, ``masking_logs``, ``tracing``.
"""
