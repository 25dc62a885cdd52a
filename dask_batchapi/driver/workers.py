"""A driver's side of worker leases: ask the scheduler's lease table for workers, follow it,
give workers back (:mod:`dask_batchapi.cluster.leases`).

>>> leases = WorkerLeases(client, record, plugin)          # doctest: +SKIP
>>> leases.request().queue_position                      # doctest: +SKIP
2
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distributed import Client
from distributed.protocol.pickle import dumps

from dask_batchapi.cluster.backends import error_line
from dask_batchapi.cluster.leases import PLUGIN_NAME, LeasePlugin
from dask_batchapi.errors import ClusterError
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.status import parse_iso

logger = logging.getLogger(__name__)

_POLL = 0.05  # seconds between looks at the lease table while queued


@dataclass(frozen=True)
class LeaseView:
    """What the lease table says about one job."""

    ready: list[str]  # workers leased to the job, its plugin set up there
    held: int  # workers leased, ready or still being set up
    queue_position: int | None  # 1 = next; None while it holds workers


def ensure_lease_table(client: Client) -> None:
    """Register the lease table on the client's scheduler (once per scheduler)."""
    try:
        client.register_plugin(LeasePlugin(), name=PLUGIN_NAME)
    except Exception as exc:  # noqa: BLE001 - e.g. the scheduler cannot import dask_batchapi
        raise ClusterError(
            "the scheduler cannot host dask_batchapi's worker leases "
            f"({error_line(exc)}): install dask-batchapi where the scheduler runs"
        ) from None


class WorkerLeases:
    """The leases of one job's driver on ``client``'s scheduler."""

    def __init__(self, client: Client, record: JobRecord, plugin: Any, resources: dict | None):
        self.client, self.job_id = client, record.job_id
        submitted = parse_iso(record.created_time) or time.time()
        self._job = {
            "job_id": record.job_id,
            "api_name": record.api_name,
            "client": client.id,
            "asked": record.workers,
            "priority": record.submission.priority,
            "submitted": submitted,
            "plugin": dumps(plugin),
            "name": plugin.name,
            "resources": resources,
        }

    def _call(self, handler: str, **kwargs: Any) -> dict:
        return self.client.sync(getattr(self.client.scheduler, handler), **kwargs)

    def request(self) -> LeaseView:
        ensure_lease_table(self.client)
        return _view(self._call("batchapi_lease_request", job=self._job))

    def poll(self) -> LeaseView:
        answer = self._call("batchapi_lease_poll", job_id=self.job_id)
        if not answer["known"]:  # the scheduler restarted: ask again
            return self.request()
        return _view(answer)

    def wait(self, on_wait: Callable[[LeaseView], None]) -> LeaseView:
        """Block until the job holds a ready worker; ``on_wait`` is called while it waits
        (it may raise to give up)."""
        view = self.request()
        while not view.ready:
            on_wait(view)
            time.sleep(_POLL)
            view = self.poll()
        return view

    def release(self, workers: list[str]) -> None:
        """Give ``workers`` back: the job has no more batches for them."""
        if workers:
            self._call("batchapi_lease_release", job_id=self.job_id, workers=list(workers))

    def close(self) -> None:
        """Give every worker back and leave the queue (the job ended)."""
        try:
            self._call("batchapi_lease_release", job_id=self.job_id, workers=None)
        except Exception as exc:  # noqa: BLE001 - the cluster may already be gone
            logger.debug("releasing the workers of %s failed: %s", self.job_id, exc)


def idle_workers(workers: list[str], busy: Counter, keep: str | None) -> list[str]:
    """The workers a job with no more batches to send gives back: those running none of its
    batches, but one idle worker (``keep`` when it can) always stays, for retries, chunks that
    a busy worker may still lose, and ``on_job_complete``.

    >>> idle_workers(["a", "b", "c"], Counter({"c": 1}), keep="b")
    ['a']
    """
    idle = [w for w in workers if busy[w] == 0]
    if not idle:
        return []
    stay = keep if keep in idle else idle[0]
    return [w for w in idle if w != stay]


def _view(answer: dict) -> LeaseView:
    return LeaseView(
        ready=list(answer["ready"]),
        held=int(answer["held"]),
        queue_position=answer.get("queue_position"),
    )


def cluster_status(client: Client) -> dict:
    """The workers of ``client``'s cluster with the job holding each, and the job queue."""
    ensure_lease_table(client)
    return client.sync(client.scheduler.batchapi_lease_status)


class WorkerSet:
    """The workers one job holds, and which of them each chunk in flight was pinned to.

    Each chunk is pinned to one leased worker: the one that already holds its data (delimited
    files indexed there) when it has room, else the least busy. The pin is loose: should that
    worker die, Dask may rerun the task elsewhere instead of waiting forever for a result lost
    after it finished; on a worker not leased to the job the task finds no plugin and returns
    its batches unrun.
    """

    def __init__(self, leases: WorkerLeases, prefetch: int, no_workers_timeout: float):
        self.leases, self.prefetch = leases, prefetch
        self.no_workers_timeout = no_workers_timeout
        self.workers: list[str] = []  # leased to the job, its plugin set up there
        self._pins: dict[str, str] = {}  # chunk key -> worker
        self._none_since: float | None = None

    def __len__(self) -> int:
        return len(self.workers)

    def __contains__(self, worker: object) -> bool:
        return worker in self.workers

    def place(self, preferred: str | None) -> dict:
        """Where the next chunk runs (``client.submit`` keywords)."""
        load = self.load()
        if not (preferred in self.workers and load[preferred] < self.prefetch):
            preferred = min(self.workers, key=lambda w: load[w])
        return {"workers": [preferred], "allow_other_workers": True}

    def pinned(self, key: str, where: dict) -> None:
        self._pins[key] = where["workers"][0]

    def unpinned(self, key: str) -> None:
        self._pins.pop(key, None)

    def load(self) -> Counter:
        """Chunks in flight per worker."""
        return Counter(self._pins.values())

    def refresh(self) -> set[str]:
        """Follow the lease table (more workers when others freed up); the workers gone."""
        gone = set(self.workers)
        self.workers = self.leases.poll().ready
        return gone - set(self.workers)

    def orphaned(self, keys: list[str]) -> list[str]:
        """Of the chunk ``keys``, those pinned to a worker the job no longer holds."""
        return [k for k in keys if k in self._pins and self._pins[k] not in self.workers]

    def give_back_idle(self, keep: str | None) -> None:
        """No more batches to send: give back the workers that run none of the job's."""
        idle = idle_workers(self.workers, self.load(), keep)
        if idle:
            self.leases.release(idle)
            self.workers = [w for w in self.workers if w not in idle]

    def lost_all_for(self, now: float) -> float | None:
        """Seconds the job has held no worker, once past ``no_workers_timeout`` (else None)."""
        if self.workers:
            self._none_since = None
            return None
        self._none_since = self._none_since or now
        waited = now - self._none_since
        return waited if waited > self.no_workers_timeout else None

    def waiting(self) -> None:
        """The job waits in the queue: that is not having lost its workers."""
        self._none_since = None
