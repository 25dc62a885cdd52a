"""The job whose handler code runs right now in this process, and where it may submit jobs.

While a worker runs handler code (``Handler.__init__``, ``handle_batch``, ``on_job_complete``)
the job's :class:`HandlerScope` is current: ``dask_batchapi.client()`` and ``cortex.client()``
without arguments then point at the job's own store and cluster, a job submitted from there
records ``triggered_by`` (the current job), and the submitted job's reference is kept here until
the worker hands it back to the parent's driver with the batch or hook result.

Handler code runs under one process-wide lock (:mod:`dask_batchapi.worker.plugin`), so one
process-wide current scope is exact: threads the handler starts see it while the call runs.

>>> scope = HandlerScope(store="/tmp/store", cluster="tcp://127.0.0.1:8786",
...                      api_name="stage-one", job_id="0123456789abcdef")
>>> with entered(scope):
...     current() is scope
True
>>> current() is None
True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
_CURRENT: HandlerScope | None = None


@dataclass
class HandlerScope:
    """Where the current job lives, as its handler code sees it.

    ``cluster`` is the target that jobs submitted from handler code use (the parent's scheduler
    address, ``kubernetes``, or ``local`` when the parent's embedded cluster ends with it);
    ``runner`` is the Unix socket of the runner that owns the parent's embedded cluster, when
    it takes jobs (see :mod:`dask_batchapi.driver.warm`).
    """

    store: str
    cluster: str
    api_name: str
    job_id: str
    runner: str | None = None
    triggered: list[dict] = field(default_factory=list)

    @property
    def ref(self) -> dict:
        """``{"api_name", "job_id"}`` of the job: a child's ``triggered_by``."""
        return {"api_name": self.api_name, "job_id": self.job_id}

    def note_triggered(self, api_name: str, job_id: str) -> None:
        with _LOCK:
            self.triggered.append({"api_name": api_name, "job_id": job_id})

    def drain(self) -> list[dict]:
        """The jobs submitted since the last drain (returned to the driver once)."""
        with _LOCK:
            taken, self.triggered = self.triggered, []
        return taken


def current() -> HandlerScope | None:
    """The scope of the handler code running now in this process, or None."""
    return _CURRENT


@contextmanager
def entered(scope: HandlerScope | None) -> Iterator[HandlerScope | None]:
    """Make ``scope`` current while handler code runs (None: leave things as they are)."""
    global _CURRENT
    if scope is None:
        yield None
        return
    previous, _CURRENT = _CURRENT, scope
    try:
        yield scope
    finally:
        _CURRENT = previous


def scope_from(origin: dict, api_name: str, job_id: str) -> HandlerScope | None:
    """The scope of a job from its context's ``origin`` (None for a context without one)."""
    if not origin or not origin.get("store") or not origin.get("cluster"):
        return None
    return HandlerScope(
        store=origin["store"],
        cluster=origin["cluster"],
        api_name=api_name,
        job_id=job_id,
        runner=origin.get("runner"),
    )
