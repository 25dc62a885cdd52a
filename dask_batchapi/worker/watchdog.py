"""``batch_timeout`` on a worker: stop a batch that runs too long, or restart a stuck worker."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any

from dask_batchapi.protocol import TIMEOUT_EVENT

logger = logging.getLogger(__name__)


class BatchTimeout(Exception):
    """Raised inside a batch that ran longer than the job's ``batch_timeout``."""


class BatchWatchdog(threading.Thread):
    """Enforces ``batch_timeout`` on one worker.

    A batch over its time gets :class:`BatchTimeout` raised inside it (asynchronously, so pure
    Python code stops at once; it counts as a failed attempt). A batch stuck in C code that
    ignores it for ``grace`` seconds more has its worker process restarted by the nanny, after
    an event tells the driver which batch it was.
    """

    def __init__(self, job_id: str, worker: Any, timeout: float, grace: float):
        super().__init__(name=f"batchapi-watchdog-{job_id}", daemon=True)
        self.job_id, self.worker = job_id, worker
        self.timeout, self.grace = float(timeout), float(grace)
        self._stop_event = threading.Event()
        self._current: tuple[Any, float, int] | None = None  # batch key, start, thread id
        self._current_lock = threading.Lock()
        self._signalled: tuple[Any, float] | None = None  # (batch key, when)

    @contextmanager
    def watching(self, key: Any):
        """Let the watchdog see which batch this thread runs, and since when."""
        with self._current_lock:
            self._current = (key, time.monotonic(), threading.get_ident())
        try:
            yield
        finally:
            with self._current_lock:
                self._current = None

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        step = min(0.1, self.timeout / 10)
        while not self._stop_event.wait(step):
            self._check(time.monotonic())

    def _check(self, now: float) -> None:
        with self._current_lock:
            if self._current is None:
                return
            key, started, thread_id = self._current
            if now - started < self.timeout:
                return
            if self._signalled is None or self._signalled[0] != key:
                self._signalled = (key, now)
                exc = ctypes.py_object(BatchTimeout)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)
                return
        if now - self._signalled[1] > self.grace and self.worker.nanny:
            self._restart_worker(key)

    def _restart_worker(self, key: Any) -> None:
        logger.error(
            "batch %s of job %s is stuck past its timeout; restarting this worker", key, self.job_id
        )
        event = {"job_id": self.job_id, "index": key}
        self.worker.loop.add_callback(self.worker.log_event, TIMEOUT_EVENT, event)
        time.sleep(0.5)  # let the event reach the scheduler
        os._exit(1)
