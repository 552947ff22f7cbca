"""Structured logs: one JSON object per line on stderr, with the record's position when known.

Fields passed as ``extra={...}`` (``shardId``, ``sequenceNumber``, ``subSequenceNumber``,
``handler``, ``documentId``, ``version``, ``check`` …) become keys of the JSON object, so a log
line can be joined with the DLQ envelope and the metrics. stdout is left alone: it belongs to
the KCL protocol and to EMF metrics.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already (masking: the masked traceback)
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send the ``qldbstream`` loggers to stderr as JSON (or text); idempotent.

    ``fmt="inherit"`` leaves the records to the application's logging: no handler of our own,
    and they propagate to the root logger - where a Powertools ``Logger`` (``Logger(service=...,
    logger_handler=...)`` or ``copy_config_to_registered_loggers``) or any other configuration
    formats them, with its correlation keys. The level is still ``level``.
    """
    logger = logging.getLogger("qldbstream")
    logger.setLevel(level.upper())
    for existing in list(logger.handlers):
        if getattr(existing, "_qldbstream", False):
            logger.removeHandler(existing)
    if fmt == "inherit":
        logger.propagate = True
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._qldbstream = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
