"""Masking log records: every record of every logger, never raising (see ``docs/handlers/masking.md``).

:class:`MaskingLogFilter` masks one record - structured arguments by field name, the formatted
message, exception texts and the stack as text (:mod:`qldbstream.core.masking_text`), ``extra`` fields
by their names - and replaces a record it cannot mask by a safe redaction.
:func:`install_log_masking` applies it to every record when it is created (the log record
factory), whatever its logger and handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from qldbstream.core.masking import Masker

__all__ = ["MaskingLogFilter", "install_log_masking", "remove_log_masking"]


class MaskingLogFilter(logging.Filter):
    """Masks a log record before any handler formats it, and never raises.

    Structured arguments (a single mapping, which ``logging`` passes as ``args`` itself; dicts,
    lists and tuples at any depth, of any type) are masked by field name; the formatted message,
    the exception text (message and traceback) and the stack are masked as text (``name: value``
    pairs, :mod:`qldbstream.core.masking_text`); ``extra`` fields by their names. A record that cannot be
    masked is replaced by a safe redaction. :func:`install_log_masking` applies it to every record
    of every logger when it is created, and to ``extra`` fields (set later) on every handler that
    exists then; it can also be attached to a handler or a logger as usual.
    """

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if not getattr(record, "_qldbstream_masked", False):
                self._mask(record)
            self._mask_extra(record)  # set after the record was created: masked at each handler
        except Exception as exc:  # never let logging fail, never let it leak: redact it all
            record.msg = (
                f"[log message withheld: it could not be masked ({type(exc).__name__}); "
                f"logger {record.name}, {record.pathname}:{record.lineno}]"
            )
            record.args = None
            record.exc_info = record.exc_text = record.stack_info = None
            for k in [k for k in vars(record) if k not in _LOG_RECORD_FIELDS and not k.startswith("_")]:
                setattr(record, k, "****")
        record._qldbstream_masked = True
        return True

    def _mask_extra(self, record: logging.LogRecord) -> None:
        from qldbstream.core.masking_text import loggable

        masker = self.masker
        for k, v in list(vars(record).items()):
            if k not in _LOG_RECORD_FIELDS and not k.startswith("_"):
                setattr(record, k, loggable(masker, v, masker.rule_for(k)))

    def _mask(self, record: logging.LogRecord) -> None:
        from qldbstream.core.masking_text import loggable, mask_text

        masker = self.masker
        if isinstance(record.msg, Mapping | list | tuple):
            record.msg = loggable(masker, record.msg)
        if isinstance(record.args, Mapping):
            record.args = loggable(masker, record.args)
        elif record.args:
            record.args = tuple(loggable(masker, a) for a in record.args)
        message = mask_text(masker, record.getMessage())
        exc_text = record.exc_text
        if record.exc_info and record.exc_info[0] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
        stack = record.stack_info
        record.msg, record.args = message, None
        record.exc_info = None
        record.exc_text = mask_text(masker, exc_text) if exc_text else None
        record.stack_info = mask_text(masker, stack) if stack else None


_LOG_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class _LogMasking:
    """The filters :func:`install_log_masking` installed (newest last: each app installs its
    own) and the log record factory that was in place before."""

    filters: ClassVar[list[MaskingLogFilter]] = []
    factory_before: ClassVar[Callable[..., logging.LogRecord] | None] = None


def _masking_record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = (_LogMasking.factory_before or logging.LogRecord)(*args, **kwargs)
    if _LogMasking.filters:
        _LogMasking.filters[-1].filter(record)
    return record


def install_log_masking(masker: Masker) -> MaskingLogFilter:
    """Mask every log record from now on, whatever its logger (``qldbstream.*``, handlers' own
    loggers even with ``propagate = False``, botocore, ...) and whatever its handlers: the filter
    runs when the record is created (the log record factory). Undo with :func:`remove_log_masking`.
    """
    log_filter = MaskingLogFilter(masker)
    if not _LogMasking.filters:
        _LogMasking.factory_before = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_masking_record_factory)
    _LogMasking.filters.append(log_filter)
    for log_handler in _log_handlers():  # ``extra`` fields are set after the record is created
        log_handler.addFilter(log_filter)
    return log_filter


def _log_handlers() -> list[logging.Handler]:
    """The handlers of the root logger and of every logger that exists now."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    found: dict[int, logging.Handler] = {}
    for logger in loggers:
        for log_handler in getattr(logger, "handlers", ()):
            found[id(log_handler)] = log_handler
    return list(found.values())


def remove_log_masking(log_filter: MaskingLogFilter) -> None:
    """Undo one :func:`install_log_masking`; the last one restores the previous record factory."""
    if log_filter in _LogMasking.filters:
        _LogMasking.filters.remove(log_filter)
    for log_handler in _log_handlers():
        log_handler.removeFilter(log_filter)
    if not _LogMasking.filters and _LogMasking.factory_before is not None:
        if logging.getLogRecordFactory() is _masking_record_factory:
            logging.setLogRecordFactory(_LogMasking.factory_before)
        _LogMasking.factory_before = None
