"""Historical export: verified revisions in a ``txTime`` range → Parquet (or JSON Lines) files,
partitioned (``year=YYYY/``), compressed, in a directory or on S3 - resumable without duplicates.

The seed's bounded export (QLDB stream → Kinesis → Firehose → S3 Parquet, ``year=`` prefix, error
prefix, GZIP) as a handler: ``qldbstream export`` drives it with the standalone worker, and it runs
under any runtime as the ``export`` plugin. See ``docs/handlers/export.md`` for the schema.
"""

from qldbstream_handlers.export.destination import DestinationCheckpointStore, ErrorPrefixDeadLetterQueue
from qldbstream_handlers.export.handler import ExportHandler, ExportProgress
from qldbstream_handlers.export.layout import Format, partition_function
from qldbstream_handlers.export.manifest import ExportIndex, ShardManifest
from qldbstream_handlers.export.options import ExportOptions, parse_time
from qldbstream_handlers.export.schema import COLUMNS, RenderError, arrow_schema, revision_row, to_json
from qldbstream_handlers.export.storage import LocalStorage, S3Storage, Storage, open_storage

__all__ = [
    "COLUMNS",
    "DestinationCheckpointStore",
    "ErrorPrefixDeadLetterQueue",
    "ExportHandler",
    "ExportIndex",
    "ExportOptions",
    "ExportProgress",
    "Format",
    "LocalStorage",
    "RenderError",
    "S3Storage",
    "ShardManifest",
    "Storage",
    "arrow_schema",
    "open_storage",
    "parse_time",
    "partition_function",
    "revision_row",
    "to_json",
]
