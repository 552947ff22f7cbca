"""The edges: everything that talks to the outside world.

Kinesis (``kinesis_reader``, ``shards``, ``kinesis_writer``), Lambda events (``lambda_event``),
files and saved QLDB API output (``files``, ``qldb_api``, ``anchors``), DynamoDB stores
(``dynamodb``, ``gate_dynamodb``), boto3 clients (``clients``), metrics backends (``metrics``),
logs (``logs``, ``masking_logs``) and tracing (``tracing``).
"""
