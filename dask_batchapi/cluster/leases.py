"""Worker leases and the job queue: a ``SchedulerPlugin`` that holds one truth per cluster.

A worker is leased to one job at a time, so a handler's environment, working directory,
imported modules and GPU memory are never shared between concurrent jobs. A job asks for
``workers`` workers; it holds at most that many, starts as soon as it holds one, gains more as
they free up, and gives each back when it has no more batches for it. Jobs that want workers
are served in order: ``priority`` (higher first), then submit time. A running job is never
preempted: a later job of higher priority waits for workers to free up.

Leasing a worker to a job installs the job's plugin there (``setup``); taking it back tears it
down and waits until its cleanup has ended before the worker is free for the next job. A job
whose driver's Dask client disconnects (the driver died) loses its leases at once
(``remove_client``). The plugin lives on the scheduler: drivers on other machines sharing the
cluster see the same table. It needs ``dask_batchapi`` importable where the scheduler runs.

Adaptive clusters (``LocalCluster.adapt``, the Kubernetes operator's autoscaler) scale on the
scheduler's ``adaptive_target``: the plugin raises it to the workers leased, being cleaned and
wanted by queued jobs (a queued job has no task yet to ask for workers with), and never lets
a leased worker be retired.

Drivers call the handlers below through ``client.scheduler.<name>(...)``
(:class:`dask_batchapi.driver.workers.WorkerLeases`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol.pickle import dumps

from dask_batchapi.worker.lease_hooks import install_job_plugin, remove_job_plugin

logger = logging.getLogger(__name__)

PLUGIN_NAME = "batchapi-leases"
_TEARDOWN_WAIT = 30.0  # seconds a release call waits for the workers' cleanup before answering


@dataclass
class LeaseJob:
    """A job that holds or wants workers."""

    job_id: str
    api_name: str
    client: str  # the driver's Dask client id: its leases end when it disconnects
    asked: int
    priority: int
    submitted: float
    plugin: bytes  # the job's pickled worker plugin
    name: str  # the plugin's name on the workers
    resources: dict | None = None
    seq: int = 0
    draining: bool = False  # it has no more batches for more workers: it takes no new ones
    held: dict[str, str] = field(default_factory=dict)  # worker -> "setup" | "ready"

    @property
    def order(self) -> tuple:
        return (-self.priority, self.submitted, self.seq)

    @property
    def wants(self) -> int:
        """Workers it would take now: none while draining, unless it holds none at all (a
        worker it kept died, and batches came back to run)."""
        if self.draining and self.held:
            return 0
        return max(0, self.asked - len(self.held))


class LeasePlugin(SchedulerPlugin):
    """The lease table and the job queue, on the scheduler (see the module docstring)."""

    idempotent = True  # registered by every driver; the first one wins
    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.jobs: dict[str, LeaseJob] = {}
        self.owner: dict[str, str] = {}  # worker -> job id
        self.tearing: set[str] = set()  # workers whose last job is being cleaned up
        self._seq = itertools.count()
        self._setups: dict[tuple[str, str], asyncio.Task] = {}  # (job id, worker) -> setup
        self._running: set[asyncio.Task] = set()  # references, so that tasks are not collected

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        tasks_target = scheduler.adaptive_target

        def adaptive_target(target_duration: Any = None) -> int:
            return max(tasks_target(target_duration), self.wanted_workers())

        scheduler.adaptive_target = adaptive_target  # the HTTP API's /adaptive_target too
        scheduler.handlers.update(
            {
                "adaptive_target": adaptive_target,
                "batchapi_lease_request": self.request,
                "batchapi_lease_poll": self.poll,
                "batchapi_lease_release": self.release,
                "batchapi_lease_status": self.status,
            }
        )

    # -- handlers -----------------------------------------------------------------------------
    def request(self, job: dict) -> dict:
        """A job asks for workers (again: a resumed driver); its view of the table."""
        old = self.jobs.get(job["job_id"])
        if old is not None and old.client != job["client"]:
            self._drop(old)  # a new driver took the job over
        if job["job_id"] not in self.jobs:
            self.jobs[job["job_id"]] = LeaseJob(**job, seq=next(self._seq))
        self._grant()
        return self.poll(job["job_id"])

    def poll(self, job_id: str) -> dict:
        """The job's ready workers, held and asked counts, and place in the queue (1 = next)."""
        job = self.jobs.get(job_id)
        if job is None:
            return {"known": False, "ready": [], "held": 0, "queue_position": None}
        ready = sorted(w for w, s in job.held.items() if s == "ready")
        return {
            "known": True,
            "ready": ready,
            "held": len(job.held),
            "asked": job.asked,
            "queue_position": self._position(job),
        }

    async def release(self, job_id: str, workers: list[str] | None = None) -> dict:
        """Take back ``workers`` of a job (all of them, and forget the job, when None); answers
        once their cleanup has ended (or after a while: the workers stay out of the pool
        until it ends)."""
        job = self.jobs.get(job_id)
        if job is None:
            return {"released": []}
        if workers is None:
            tasks = self._drop(job)
        else:
            job.draining = True
            tasks = [self._take_back(job, w) for w in workers if w in job.held]
        self._grant()
        if tasks:
            await asyncio.wait([asyncio.shield(t) for t in tasks], timeout=_TEARDOWN_WAIT)
        return {"released": len(tasks)}

    def status(self) -> dict:
        """Every worker with the job that holds it, and the queue."""
        workers = []
        for address, ws in sorted(self.scheduler.workers.items()):
            job = self.jobs.get(self.owner.get(address, ""))
            workers.append(
                {
                    "address": address,
                    "name": str(ws.name),
                    "state": "cleaning"
                    if address in self.tearing
                    else (job.held.get(address) if job else "free"),
                    "job_id": job.job_id if job else None,
                    "api_name": job.api_name if job else None,
                }
            )
        jobs = [
            {
                "job_id": j.job_id,
                "api_name": j.api_name,
                "priority": j.priority,
                "held": len(j.held),
                "asked": j.asked,
                "queue_position": self._position(j),
            }
            for j in sorted(self.jobs.values(), key=lambda j: j.order)
        ]
        return {"workers": workers, "jobs": jobs}

    def wanted_workers(self) -> int:
        """Workers the jobs hold, are having cleaned, and want: an adaptive cluster's floor."""
        return len(self.owner) + len(self.tearing) + sum(j.wants for j in self.jobs.values())

    # -- hooks --------------------------------------------------------------------------------
    def valid_workers_downscaling(self, scheduler: Any, workers: list) -> list:
        """An adaptive cluster may retire free workers only."""
        busy = set(self.owner) | self.tearing
        return [ws for ws in workers if ws.address not in busy]

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self._grant()

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.tearing.discard(worker)
        job = self.jobs.get(self.owner.pop(worker, ""))
        if job is not None:
            job.held.pop(worker, None)
        self._grant()

    def remove_client(self, scheduler: Any, client: str) -> None:
        """A driver's client is gone (it died or ended): its jobs lose their leases now."""
        for job in [j for j in self.jobs.values() if j.client == client]:
            logger.info("client %s left: job %s loses its workers", client, job.job_id)
            self._drop(job)
        self._grant()

    # -- the table ----------------------------------------------------------------------------
    def _position(self, job: LeaseJob) -> int | None:
        if job.held:
            return None
        waiting = sorted((j for j in self.jobs.values() if not j.held), key=lambda j: j.order)
        return waiting.index(job) + 1

    def _free(self) -> list[str]:
        busy = set(self.owner) | self.tearing
        return [w for w in sorted(self.scheduler.workers) if w not in busy]

    def _grant(self) -> None:
        """Give free workers to the jobs that want them, head of the queue first."""
        free = self._free()
        for job in sorted(self.jobs.values(), key=lambda j: j.order):
            for worker in [w for w in free if self._fits(w, job.resources)][: job.wants]:
                free.remove(worker)
                self.owner[worker] = job.job_id
                job.held[worker] = "setup"
                self._setups[(job.job_id, worker)] = self._spawn(self._setup(job, worker))

    def _fits(self, worker: str, resources: dict | None) -> bool:
        have = self.scheduler.workers[worker].resources or {}
        return all(have.get(k, 0) >= v for k, v in (resources or {}).items())

    def _drop(self, job: LeaseJob) -> list[asyncio.Task]:
        self.jobs.pop(job.job_id, None)
        return [self._take_back(job, w) for w in list(job.held)]

    def _take_back(self, job: LeaseJob, worker: str) -> asyncio.Task:
        job.held.pop(worker, None)
        if self.owner.get(worker) == job.job_id:
            del self.owner[worker]
        self.tearing.add(worker)
        return self._spawn(self._teardown(job, worker))

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def _setup(self, job: LeaseJob, worker: str) -> None:
        started = time.monotonic()
        ok = await self._run(worker, install_job_plugin, job.plugin, job.name)
        if job.held.get(worker) == "setup":
            job.held[worker] = "ready"
        if not ok:
            logger.warning("setup of job %s on %s failed", job.job_id, worker)
        logger.debug(
            "job %s set up on %s in %.3f s", job.job_id, worker, time.monotonic() - started
        )

    async def _teardown(self, job: LeaseJob, worker: str) -> None:
        setup = self._setups.pop((job.job_id, worker), None)
        if setup is not None and not setup.done():
            await asyncio.wait([setup])  # never a teardown before its setup has ended
        try:
            await self._run(worker, remove_job_plugin, job.name)
        finally:
            self.tearing.discard(worker)
            self._grant()

    async def _run(self, worker: str, function: Any, *args: Any) -> bool:
        """Run ``function`` on ``worker`` (an out-of-band call, as ``client.run`` makes)."""
        if worker not in self.scheduler.workers:
            return False
        try:
            answer = await self.scheduler.rpc(worker).run(
                function=dumps(function), args=dumps(args), wait=True
            )
        except Exception as exc:  # noqa: BLE001 - the worker may be gone: remove_worker follows
            logger.warning("%s on %s failed: %s", function.__name__, worker, exc)
            return False
        return answer.get("status") == "OK" and bool(answer.get("result"))
