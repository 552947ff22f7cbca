"""Time values the built-in handlers share: epoch milliseconds, and Lambda's window bounds."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["epoch_ms", "window_time_ms"]

log = logging.getLogger("qldbstream.handler")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch (an Ion timestamp of unknown offset is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def window_time_ms(text: Any) -> int | None:
    """An ISO-8601 time (``2020-12-09T07:06:00Z``, as Lambda gives tumbling window bounds) in epoch
    ms; ``None`` when absent or unreadable (logged)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return epoch_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        log.warning("cannot read the Lambda window bound %r", text)
        return None
