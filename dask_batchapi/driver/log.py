"""The driver's own lines in a job's log (job started, batch failed, job ended...).

They are formatted by the same :class:`~dask_batchapi.logging.JsonFormatter` as the workers'
lines, in the job's log context, plus ``"source": "driver"``.
"""

from __future__ import annotations

import logging
from typing import Any

from dask_batchapi.logging import format_line, log_context

logger = logging.getLogger(__name__)


class DriverLog:
    """Appends the driver's log lines to the job's log buffer (``checkpointer.logs``)."""

    def __init__(self, api_name: str, job_id: str, checkpointer: Any):
        self.api_name, self.job_id, self._ckpt = api_name, job_id, checkpointer

    def _emit(self, level: int, message: str, **extra: Any) -> None:
        record = logger.makeRecord(
            logger.name, level, __file__, 0, message, (), None, extra={"source": "driver", **extra}
        )
        with log_context(api_name=self.api_name, job_id=self.job_id):
            line = format_line(record)
        if line is not None:
            self._ckpt.logs.append(line)
        logger.log(level, "[%s] %s", self.job_id, message)

    def info(self, message: str, **extra: Any) -> None:
        self._emit(logging.INFO, message, **extra)

    def warning(self, message: str, **extra: Any) -> None:
        self._emit(logging.WARNING, message, **extra)

    def error(self, message: str, **extra: Any) -> None:
        self._emit(logging.ERROR, message, **extra)
