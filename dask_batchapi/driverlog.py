"""The driver's own lines in a job's log (job started, batch failed, job ended...)."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

logger = logging.getLogger(__name__)


class DriverLog:
    """Writes JSON lines in the same shape as the workers' into the job's log buffer."""

    def __init__(self, api_name: str, job_id: str, checkpointer: Any):
        self.api_name, self.job_id, self._ckpt = api_name, job_id, checkpointer

    def _emit(self, level: str, message: str, **extra: Any) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        line = {
            "asctime": f"{stamp},{int(now * 1000) % 1000:03d}",
            "levelname": level,
            "message": message,
            "process": os.getpid(),
            "api_name": self.api_name,
            "job_id": self.job_id,
            "source": "driver",
            **extra,
        }
        self._ckpt.logs.append(json.dumps(line, default=str))
        logger.log(logging.getLevelName(level), "[%s] %s", self.job_id, message)

    def info(self, message: str, **extra: Any) -> None:
        self._emit("INFO", message, **extra)

    def warning(self, message: str, **extra: Any) -> None:
        self._emit("WARNING", message, **extra)

    def error(self, message: str, **extra: Any) -> None:
        self._emit("ERROR", message, **extra)
