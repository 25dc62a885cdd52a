"""One log record as one JSON line in Cortex's shape (:class:`JsonFormatter`, :func:`format_line`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from dask_batchapi.logging.context import (
    _BASE_FORMAT,
    _LINE_FIELDS,
    _RECORD_ATTRS,
    MAX_LINE_BYTES,
    RESERVED_KEYS,
    _record_context,
)

# -- formatting ------------------------------------------------------------------------------


class JsonFormatter(_BaseJsonFormatter):
    """Format a record as one JSON line in Cortex's shape.

    The line holds ``asctime, levelname, message, process``, then ``api_name``, ``job_id`` and
    ``batch_id`` from the current :func:`log_context`, then ``exc_info`` for exceptions, then
    the keys of ``extra`` as top-level keys (the keys of :data:`RESERVED_KEYS` are ignored
    there: the framework's values win). Values JSON cannot hold are written with ``str()``.

    Examples
    --------
    >>> import logging
    >>> record = logging.makeLogRecord({"msg": "hi", "levelname": "INFO", "rows": 3})
    >>> line = JsonFormatter().format(record)
    >>> json.loads(line)["rows"]
    3
    """

    def __init__(self) -> None:
        # ASCII-only output makes a line's length its size in bytes.
        super().__init__(_BASE_FORMAT, json_default=_safe_str, json_ensure_ascii=True)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        for name in ("asctime", "levelname", "message", "process"):
            log_data[name] = record.__dict__.get(name)
        context = _record_context(record)
        log_data.update((name, context[name]) for name in _LINE_FIELDS if name in context)
        for key, value in _user_fields(record, message_dict):
            if key not in RESERVED_KEYS:
                log_data[key] = value

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        try:
            return super().jsonify_log_record(log_data)
        except (TypeError, ValueError):
            # A value json cannot walk even with default=str: a circular list, tuple dict keys.
            safe = {str(key): _json_safe(value) for key, value in log_data.items()}
            return super().jsonify_log_record(safe)


def _user_fields(record: logging.LogRecord, message_dict: dict[str, Any]) -> Iterator[tuple]:
    """The fields the caller added: a dict message, ``exc_info``, and the keys of ``extra``."""
    yield from message_dict.items()
    for key, value in record.__dict__.items():
        private = isinstance(key, str) and key.startswith("_")
        if key not in _RECORD_ATTRS and not private:
            yield key, value


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value, default=_safe_str)
    except (TypeError, ValueError):
        return _safe_str(value)
    return value


_FORMATTER = JsonFormatter()
logger = logging.getLogger("batchapi")


def format_line(record: logging.LogRecord) -> str | None:
    """Return the JSON line of ``record``, or ``None`` when it is over :data:`MAX_LINE_BYTES`.

    Examples
    --------
    >>> record = logging.makeLogRecord({"msg": "x" * MAX_LINE_BYTES})
    >>> format_line(record) is None
    True
    """
    line = _FORMATTER.format(record)
    return line if len(line) <= MAX_LINE_BYTES else None


def _line_or_notice(record: logging.LogRecord) -> str:
    """The record's line, or a short warning in its place when the line is too long."""
    line = _FORMATTER.format(record)
    if len(line) <= MAX_LINE_BYTES:
        return line
    message = f"a log line of {len(line)} bytes was dropped (the limit is {MAX_LINE_BYTES} bytes)"
    return _notice(message, _record_context(record), dropped_line_bytes=len(line))


def _notice(message: str, context: Mapping[str, Any], **extra: Any) -> str:
    """A WARNING line from the framework itself, written in the given job context."""
    extra["_batchapi_context"] = context
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, None, None)
    record.__dict__.update(extra)
    return _FORMATTER.format(record)
