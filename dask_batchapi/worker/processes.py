"""The processes a job's handler started on a worker, ended with the job.

A handler may fork (``subprocess``, ``multiprocessing``) and leave children running after its
batch returns. The worker process' children are noted before and after each stretch of handler
code (``__init__``, a chunk of batches, ``on_job_complete``): the new ones are the job's. At
teardown they, and their own children, get SIGTERM, then SIGKILL after a grace period. Children
that existed before (those of the worker itself, or of another job) are left alone, and so are
the drivers of jobs that handler code submitted (:func:`detached`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

import psutil

logger = logging.getLogger(__name__)

_GRACE = 2.0  # seconds a child gets between SIGTERM and SIGKILL
_DETACHED: set[int] = set()  # children we started on purpose to outlive the job (job drivers)


def detached(pid: int) -> None:
    """Mark a child of this process as meant to outlive the job: the driver of a job that
    handler code submitted (:mod:`dask_batchapi.driver.launch`) is never ended at teardown."""
    _DETACHED.add(pid)


def _child_pids() -> set[int]:
    """This process' direct children: from /proc (0.1 ms) where it tells, else psutil (which
    reads every process of the machine: milliseconds, on every chunk)."""
    pids: set[int] = set()
    try:
        for task in os.scandir("/proc/self/task"):
            with open(os.path.join(task.path, "children")) as f:
                pids.update(int(p) for p in f.read().split())
    except OSError:
        with contextlib.suppress(psutil.Error):
            pids = {p.pid for p in psutil.Process().children()}
    return pids


def _processes(pids: set[int]) -> set[psutil.Process]:
    procs = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.add(psutil.Process(pid))
    return procs


class JobProcesses:
    """Collects the children started while the job's code runs; :meth:`end` ends them."""

    def __init__(self) -> None:
        self._found: set[psutil.Process] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Note the children that appear while the body (handler code) runs."""
        before = _child_pids()
        try:
            yield
        finally:
            new = _processes(_child_pids() - before - _DETACHED)
            with self._lock:
                self._found |= new

    def end(self, grace: float = _GRACE) -> list[int]:
        """SIGTERM the job's processes still alive (and their children), SIGKILL after ``grace``
        seconds; the pids that were ended."""
        with self._lock:
            found, self._found = self._found, set()
        alive = []
        for proc in found:
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    alive += [proc, *proc.children(recursive=True)]
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, left = psutil.wait_procs(alive, timeout=grace)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if alive:
            logger.info("ended %d process(es) the job left running", len(alive))
        return [p.pid for p in alive]
