"""Structured JSON logging: the user-facing ``batchapi`` logger, the job log context, and the
per-job collector that gathers a job's log lines for the store (:mod:`.context`, :mod:`.format`,
:mod:`.collector`; the stderr handler and the ``batchapi`` logger live here).

Every line is one JSON object in Cortex's shape::

    {"asctime": "2021-01-19 15:14:05,291", "levelname": "INFO", "message": "loaded",
     "process": 12, "api_name": "my-api", "job_id": "69b9...", "batch_id": "3"}

Where lines go:

- outside a job context, ``logger`` writes them to stderr, like Cortex;
- inside one (``log_context(job_id=...)``), once :func:`install_collector` has run, they go to
  the :class:`JobLogCollector` instead (never to both), which keeps them per job until the
  runtime drains them into the store. Records of other loggers (``logging.getLogger(__name__)``
  in handler code) are collected too, and so are ``print`` calls inside :func:`capture_output`.

This package shares its name with the standard library's; ``import logging`` in its modules is the
standard library (imports are absolute).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from dask_batchapi.logging.collector import JobLogCollector, install_collector, installed_collector
from dask_batchapi.logging.context import (
    LOG_LEVELS,
    MAX_LINE_BYTES,
    RESERVED_KEYS,
    _check_level,
    _context_level,
    _record_context,
    current_context,
    log_context,
)
from dask_batchapi.logging.format import JsonFormatter, _line_or_notice, format_line

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


logger = logging.getLogger("batchapi")

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
        if installed_collector() is not None and "job_id" in context:
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
