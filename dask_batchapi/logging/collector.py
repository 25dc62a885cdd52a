"""The per-job collector: a job's log lines, gathered on a worker until the runtime drains them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dask_batchapi.logging.context import DEFAULT_BUFFER_BYTES, _context_level, _record_context
from dask_batchapi.logging.format import _line_or_notice, _notice

logger = logging.getLogger("batchapi")

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


def installed_collector() -> JobLogCollector | None:
    """This process's collector, once :func:`install_collector` has run."""
    return _collector
