"""The job log context (``api_name``, ``job_id``, ``batch_id``, ``log_level``) and the constants
of the log line format."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

RESERVED_KEYS = frozenset(
    {"asctime", "levelname", "message", "process", "labels", "api_name", "job_id", "batch_id"}
)
MAX_LINE_BYTES = 5 * 1024 * 1024  # Cortex drops longer lines
DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024  # per job, between two drains

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_CONTEXT_FIELDS = ("api_name", "job_id", "batch_id", "log_level")
_LINE_FIELDS = ("api_name", "job_id", "batch_id")  # the context fields written on each line
_BASE_FORMAT = "%(asctime)s %(levelname)s %(message)s %(process)d"
# Attributes every LogRecord has; any other attribute of a record came from ``extra``.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# -- context ---------------------------------------------------------------------------------

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "batchapi_log_context", default=MappingProxyType({})
)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields to the log lines of this thread (or task) while the block runs.

    Parameters
    ----------
    **fields
        Any of ``api_name``, ``job_id``, ``batch_id`` and ``log_level`` (``"debug"``,
        ``"info"``, ``"warning"`` or ``"error"``; the default is ``"info"``). Nested contexts
        add to and override the outer one; a field set to ``None`` is removed.

    Examples
    --------
    >>> with log_context(api_name="my-api", job_id="j1"), log_context(batch_id="7"):
    ...     current_context()
    {'api_name': 'my-api', 'job_id': 'j1', 'batch_id': '7'}
    """
    token = _context.set(_merged_context(fields))
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """Return a copy of the fields that :func:`log_context` set for this thread."""
    return dict(_context.get())


def _merged_context(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(_CONTEXT_FIELDS))
    if unknown:
        raise TypeError(
            f"log_context() got unknown field(s) {', '.join(unknown)}; "
            f"expected {', '.join(_CONTEXT_FIELDS)}"
        )
    if fields.get("log_level") is not None:
        fields["log_level"] = _check_level(fields["log_level"])
    merged = {**_context.get(), **fields}
    return {key: value for key, value in merged.items() if value is not None}


def _check_level(level: str) -> str:
    name = str(level).lower()
    if name not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return name


def _context_level(context: Mapping[str, Any], default: int = logging.INFO) -> int:
    return LOG_LEVELS[context["log_level"]] if "log_level" in context else default


def _record_context(record: logging.LogRecord) -> Mapping[str, Any]:
    # Records are formatted in the thread that logs them, so the current context is theirs;
    # the notices this module builds for another job carry their context with them.
    stamped = record.__dict__.get("_batchapi_context")
    return _context.get() if stamped is None else stamped
