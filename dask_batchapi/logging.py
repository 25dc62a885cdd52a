"""Structured JSON logging: the user-facing ``batchapi`` logger, the job log context, and the
per-job collector that gathers a job's log lines for the store.

Every line is one JSON object in Cortex's shape::

    {"asctime": "2021-01-19 15:14:05,291", "levelname": "INFO", "message": "loaded",
     "process": 12, "api_name": "my-api", "job_id": "69b9...", "batch_id": "3"}

Where lines go:

- outside a job context, ``logger`` writes them to stderr, like Cortex;
- inside one (``log_context(job_id=...)``), once :func:`install_collector` has run, they go to
  the :class:`JobLogCollector` instead (never to both), which keeps them per job until the
  runtime drains them into the store. Records of other loggers (``logging.getLogger(__name__)``
  in handler code) are collected too, and so are ``print`` calls inside :func:`capture_output`.

This module shares its name with the standard library's; ``import logging`` below is the
standard library (imports are absolute).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

__all__ = [
    "MAX_LINE_BYTES",
    "RESERVED_KEYS",
    "JobLogCollector",
    "JsonFormatter",
    "configure_cli_logging",
    "current_context",
    "format_line",
    "install_collector",
    "log_context",
    "logger",
]

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

logger = logging.getLogger("batchapi")


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


# -- the per-job collector -------------------------------------------------------------------


@dataclass
class _JobBuffer:
    context: Mapping[str, Any]  # api_name and job_id, for the notice of dropped lines
    lines: list[str] = field(default_factory=list)
    size: int = 0
    dropped: int = 0


class JobLogCollector(logging.Handler):
    """Collects the formatted lines of records emitted while a job context (job_id set) is
    active, per job.

    Records below the context's ``log_level`` are skipped. A line over
    :data:`MAX_LINE_BYTES` is replaced by a short WARNING line giving its size. When a job's
    buffer holds ``max_buffer_bytes``, further lines are counted and dropped, and the next
    :meth:`drain` starts with one line saying how many. Thread-safe.

    Examples
    --------
    >>> collector = JobLogCollector()
    >>> logger.addHandler(collector)
    >>> with log_context(job_id="j1"):
    ...     logger.info("hello")
    >>> [json.loads(line)["message"] for line in collector.drain("j1")]
    ['hello']
    >>> logger.removeHandler(collector)
    """

    def __init__(self, max_buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> None:
        super().__init__()
        self.max_buffer_bytes = max_buffer_bytes
        self._buffers: dict[str, _JobBuffer] = {}
        self._buffers_lock = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        # Unlike Handler.handle, format outside any lock: threads of different jobs need not
        # wait on each other's formatting. Only the buffers are locked (in _append).
        checked = self.filter(record)
        if isinstance(checked, logging.LogRecord):
            record = checked
        if checked:
            self.emit(record)
        return bool(checked)

    def emit(self, record: logging.LogRecord) -> None:
        context = _record_context(record)
        job_id = context.get("job_id")
        if job_id is None or record.levelno < _context_level(context) or self._seen(record):
            return
        try:
            line = _line_or_notice(record)
        except Exception:
            self.handleError(record)
            return
        self._append(str(job_id), context, line)

    def drain(self, job_id: str) -> list[str]:
        """Return the buffered lines of ``job_id`` in the order they were logged, and clear them."""
        with self._buffers_lock:
            buffer = self._buffers.pop(str(job_id), None)
        if buffer is None:
            return []
        if not buffer.dropped:
            return buffer.lines
        message = (
            f"{buffer.dropped} log lines were dropped: a job may buffer at most "
            f"{self.max_buffer_bytes} bytes of log lines between two drains"
        )
        return [_notice(message, buffer.context, dropped_lines=buffer.dropped), *buffer.lines]

    def discard(self, job_id: str) -> None:
        """Forget the buffered lines of ``job_id``."""
        with self._buffers_lock:
            self._buffers.pop(str(job_id), None)

    def _seen(self, record: logging.LogRecord) -> bool:
        # The collector sits on both the batchapi logger and the root logger; a record that
        # reaches it twice (through propagation) is kept once.
        seen_by = record.__dict__.setdefault("_batchapi_collected_by", set())
        if id(self) in seen_by:
            return True
        seen_by.add(id(self))
        return False

    def _append(self, job_id: str, context: Mapping[str, Any], line: str) -> None:
        size = len(line) + 1  # with its newline, as stored
        with self._buffers_lock:
            buffer = self._buffers.get(job_id)
            if buffer is None:
                job = {name: context[name] for name in ("api_name", "job_id") if name in context}
                buffer = self._buffers[job_id] = _JobBuffer(job)
            if buffer.size + size > self.max_buffer_bytes:
                buffer.dropped += 1
            else:
                buffer.lines.append(line)
                buffer.size += size


_collector: JobLogCollector | None = None
_install_lock = threading.Lock()


def install_collector() -> JobLogCollector:
    """Create this process's :class:`JobLogCollector` once and attach it where records arrive.

    It is attached to the ``batchapi`` logger and to the root logger, so records of any logger
    emitted in a job context are collected (each once). Other loggers are collected at their
    own effective level (Python's default is WARNING); ``batchapi`` is set to DEBUG so that the
    context's ``log_level`` decides. In a job context, records go to the collector, not stderr.

    Examples
    --------
    >>> install_collector() is install_collector()
    True
    """
    global _collector
    with _install_lock:
        if _collector is None:
            _collector = JobLogCollector()
        # addHandler skips a handler already attached, so calling again re-attaches the
        # collector after a logging reconfiguration removed it.
        logger.addHandler(_collector)
        logging.getLogger().addHandler(_collector)
        logger.setLevel(logging.DEBUG)
        logger.disabled = False  # dictConfig disables existing loggers by default
        return _collector


# -- stderr ----------------------------------------------------------------------------------


class _StderrHandler(logging.Handler):
    """JSON lines to the process's real stderr, for the records no job collector takes.

    Records below the context's log_level (``default_level`` outside any) are skipped.
    """

    def __init__(self, default_level: int) -> None:
        super().__init__()
        self.default_level = default_level

    def filter(self, record: logging.LogRecord) -> bool | logging.LogRecord:
        context = _record_context(record)
        if _collector is not None and "job_id" in context:
            return False  # the job's log has it
        if record.levelno < _context_level(context, self.default_level):
            return False
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        stream = _real_stream("stderr")
        if stream is None:
            return
        try:
            stream.write(_line_or_notice(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_cli_logging(level: str = "warning") -> None:
    """Log JSON lines to stderr from every logger at ``level`` and above (CLI / driver process).

    Calling it again only changes the level.

    Examples
    --------
    >>> configure_cli_logging("info")  # doctest: +SKIP
    """
    number = LOG_LEVELS[_check_level(level)]
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler(number)
        root.addHandler(handler)
    handler.default_level = number
    root.setLevel(number)


# Like Cortex: the logger writes its own JSON lines and does not propagate, so a handler that
# someone put on the root logger never prints them a second time (in another format).
logger.setLevel(logging.INFO)
logger.propagate = False
logger.addHandler(_StderrHandler(logging.INFO))


def _real_stream(name: str) -> Any:
    """``sys.stdout`` / ``sys.stderr`` under any print-capture routers
    (:mod:`dask_batchapi.worker.capture` puts them in place; they keep the stream they replaced
    as ``original``)."""
    stream = getattr(sys, name)
    while getattr(type(stream), "routes_captured_output", False):
        stream = stream.original
    return stream
