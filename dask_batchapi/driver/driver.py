"""The per-job driver: feeds batch futures to Dask, retries, dead letter, checkpoints, finishes.

One :class:`JobDriver` runs one job (or one resumed run of it) on a ``distributed.Client``:

1. leases workers for the job (:mod:`dask_batchapi.driver.workers`), waiting ``pending`` in
   the cluster's job queue while none is free; each leased worker gets the job's
   :class:`~dask_batchapi.worker.plugin.JobPlugin` (``enqueuing``);
2. streams batch references from the source and keeps a bounded window of chunk futures in
   flight (``running``): at most ``prefetch`` chunks per leased worker, each chunk pinned to
   one of them, so memory is O(window);
   short batches are coalesced into chunks sized from the measured time per batch;
3. records each batch's outcome (:class:`~dask_batchapi.outcomes.BatchBook`): successes into
   the ledger, failed attempts back into the queue until spent, then the dead letter; chunks
   lost with their worker rerun without spending attempts;
4. when every batch is final runs ``on_job_complete`` once on a worker that handled batches,
   writes the final status, and gives its workers back (idle ones as soon as it has no more
   batches for them).

Completion is detected at once: futures' done-callbacks feed a queue the driver blocks on. The
same loop wakes at least every ``_TICK`` seconds to checkpoint, heartbeat, and look for a stop
request or the job's timeout.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from distributed import Client, Future

from dask_batchapi.cluster.backends import missing_resources
from dask_batchapi.driver.budget import BudgetGuard, not_attempted
from dask_batchapi.driver.chunking import ChunkSizer, max_chunk_batches
from dask_batchapi.driver.init_deaths import InitDeaths
from dask_batchapi.driver.isolation import isolation_for
from dask_batchapi.driver.ledger import Checkpointer
from dask_batchapi.driver.log import DriverLog
from dask_batchapi.driver.losses import LossWatcher, error_dict, lost_info
from dask_batchapi.driver.outcomes import BatchBook, JobDeleted, JobEnded, OutOfMemory
from dask_batchapi.driver.settings import DriverSettings
from dask_batchapi.driver.store_failure import end_on_store_failure
from dask_batchapi.driver.window import ChunkWindow
from dask_batchapi.driver.workers import LeaseView, WorkerLeases, WorkerSet
from dask_batchapi.errors import LeaseLost, SourceError, StoreError
from dask_batchapi.protocol import (
    INIT_EVENT,
    CompletionResult,
    JobContext,
)
from dask_batchapi.sources.batches import BatchRef
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.status import JobState, JobStatus, parse_iso, utcnow_iso
from dask_batchapi.store.jobstore import JobStore
from dask_batchapi.worker.plugin import JobPlugin, run_complete_task

logger = logging.getLogger(__name__)

_TICK = 0.2  # seconds the loop sleeps at most between looks at stop / timeout / checkpoint


class JobDriver(ChunkWindow):
    """Runs one job (or one resumed run of it) to a final status on ``client``."""

    def __init__(
        self,
        store: JobStore,
        record: JobRecord,
        context: JobContext,
        archive: bytes,
        refs: Iterator[BatchRef],
        client: Client,
        *,
        state: JobState,
        skip: Any = (),
        resources: dict | None = None,
        locate: Callable[[BatchRef], str | None] | None = None,
        settings: DriverSettings | None = None,
    ):
        self.settings = settings = settings or DriverSettings.resolve()
        self.store, self.record, self.client = store, record, client
        self.resources = resources
        self._locate = locate  # the worker holding a batch's data (delimited files), if known
        self.api_name, self.job_id = record.api_name, record.job_id
        self.plugin = JobPlugin(context, archive)
        self.state = state
        self.has_complete_hook = bool(context.signature.get("complete_method"))
        submission = record.submission
        self.timeout = submission.timeout
        self.deadline = _deadline(record, self.timeout)
        self._source = (ref for ref in refs if ref.index not in skip)
        self._source_done = False
        self._inflight: dict[str, tuple[Future, list[BatchRef], float]] = {}
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._last_worker: str | None = None
        self._ckpt = Checkpointer(store, self.api_name, self.job_id, state.run)
        self.log = DriverLog(self.api_name, self.job_id, self._ckpt)
        self.book = BatchBook(
            self.job_id,
            state,
            self._ckpt,
            self.log,
            max_attempts=record.max_attempts,
            max_losses=settings.max_worker_losses,
            max_ooms=settings.max_oom_retries,
            isolation=isolation_for(record),
            guard=BudgetGuard(submission.error_budget),
        )
        self._pulled = 0  # index after the last batch taken from the source (error budget)
        self._next_checkpoint = 0.0
        self.sizer = ChunkSizer(
            settings.chunk_target_seconds,
            max_chunk_batches(submission, settings.max_chunk_batches, settings.max_chunk_items),
        )
        self.pool: WorkerSet | None = None  # the workers leased to the job, once it holds some
        self.leases: WorkerLeases | None = None
        self._suspect_running = False
        self.losses = LossWatcher(client)
        self._init_deaths = InitDeaths(
            settings.max_worker_losses,
            lambda: bool(self.losses.events(INIT_EVENT, 0, "job_id", self.job_id)),
        )

    # -- entry point --------------------------------------------------------------------------
    def run(self) -> JobStatus:
        """Run the job to a final status; never raises for the job's own failures."""
        try:
            return self._run()
        except LeaseLost as exc:  # a newer driver took the job over: leave without a write
            logger.warning("%s", exc)
            self._release()
        except StoreError as exc:  # the store refuses our writes (full, gone): end the job
            self._release()
            end_on_store_failure(self.store, self.api_name, self.job_id, self.state, exc)
        return self.state.job_status

    def _run(self) -> JobStatus:
        try:
            self._start()
            self._dispatch_until_drained()
            self._end_if_over_budget()
            self._complete()
            failures = self.state.dead_lettered
            self._finish(JobStatus.COMPLETED_WITH_FAILURES if failures else JobStatus.SUCCEEDED)
        except JobEnded as ended:
            self._finish(ended.status, ended.error)
        except JobDeleted:
            self.log.info("job deleted from the store: ending without a trace")
            self._release()
            self.state.move_to(JobStatus.STOPPED)
        except OutOfMemory as exc:
            self.log.error(str(exc))
            self._finish(JobStatus.WORKER_OOM, error_dict("out_of_memory", exc))
        except (LeaseLost, StoreError):
            raise
        except SourceError as exc:
            self.log.error(f"input could not be read: {exc}")
            self._finish(JobStatus.ENQUEUE_FAILED, error_dict("enqueue", exc))
        except Exception as exc:  # noqa: BLE001 - any driver failure must end in a final status
            logger.exception("driver of job %s failed", self.job_id)
            self._finish(JobStatus.UNEXPECTED_ERROR, error_dict("driver", exc))
        return self.state.job_status

    # -- phases -------------------------------------------------------------------------------
    def _start(self) -> None:
        self.state.move_to(JobStatus.ENQUEUING)
        self.state.driver = {"host": socket.gethostname(), "pid": os.getpid()}
        self.state.dashboard_link = getattr(self.client, "dashboard_link", None)
        self._checkpoint()
        problem = missing_resources(self.client, self.resources)
        if problem:
            self.log.error(problem)
            raise JobEnded(
                JobStatus.WORKER_ERROR,
                {"type": "MissingResources", "message": problem, "reason": "resources"},
            )
        self._lease_workers()
        self.state.start_time = self.state.start_time or utcnow_iso()  # queued time is not run time
        self.losses.listen()  # chunks lost on clusters that reschedule them by themselves
        self._refresh_workers()
        self.log.info(f"job started on {len(self.workers)} worker(s)")
        self.state.move_to(JobStatus.RUNNING)
        self._checkpoint()

    def _lease_workers(self) -> None:
        """Hold at least one worker: wait ``pending`` in the cluster's queue while none is free."""
        self.leases = WorkerLeases(self.client, self.record, self.plugin, self.resources)
        s = self.settings
        self.pool = WorkerSet(self.leases, s.prefetch, s.no_workers_timeout)
        self.leases.wait(self._queued)
        if self.state.job_status is JobStatus.PENDING:
            self.state.move_to(JobStatus.ENQUEUING)
        self.state.queue_position = None

    def _queued(self, view: LeaseView) -> None:
        position = view.queue_position
        if position is not None and position != self.state.queue_position:
            self.state.move_to(JobStatus.PENDING)
            self.state.queue_position = position
            self.log.info(f"waiting for a free worker: number {position} in the queue")
            self._checkpoint()
        self.pool.waiting()  # queued is not lost
        self.tick()  # a stop, a deadline or a deletion while queued

    def _dispatch_until_drained(self) -> None:
        self.tick()  # a deadline may have passed, or a stop come, while the cluster started
        while True:
            self._fill_window()
            self._give_back_idle()
            over_budget = self.book.guard.tripped
            if not self._inflight and (over_budget or (self._source_done and not self.book.retry)):
                return
            self._handle(self._wait(_TICK))
            if self.book.guard.tripped and not over_budget:
                self._cancel_queued()
            self.tick()

    def _end_if_over_budget(self) -> None:
        """The error budget stopped the job: end it, listing what it did not run."""
        guard = self.book.guard
        if guard.tripped:
            unfinished = {ref.index for ref in self.book.retry} | self.book.open_batches()
            self.state.not_attempted = not_attempted(
                self.record, self.state, self._pulled, unfinished
            )
            self.log.error(guard.error()["message"])
            raise JobEnded(JobStatus.COMPLETED_WITH_FAILURES, guard.error())

    def _complete(self) -> None:
        if not self.has_complete_hook:
            return
        self._check_stop()  # a job stopped before its hook never runs it (nor submits from it)
        future = self.client.submit(
            run_complete_task,
            self.plugin.name,
            pure=False,
            resources=self.resources,
            workers=[self._last_worker] if self._last_worker in self.workers else self.workers,
        )
        future.add_done_callback(self._done.put)
        while not future.done():
            self._wait(_TICK)
            self.tick()
        result = self._one_result(future)
        if result is None:
            result = CompletionResult(worker="?", error=lost_info(future))
        self._take_extras(result)
        if result.error is not None:
            self.log.error(
                f"on_job_complete raised {result.error.line}", traceback=result.error.traceback
            )
            raise JobEnded(JobStatus.WORKER_ERROR, result.error.status_error("on_job_complete"))

    def _finish(self, status: JobStatus, error: dict | None = None) -> None:
        self._cancel_all()
        self._unsubscribe()
        self.state.move_to(status)
        self.state.error = error
        self.state.in_flight = 0
        self.state.end_time = utcnow_iso()
        self.log.info(f"job ended: {status.value}")
        self._checkpoint()  # the final status first: cleaning the workers may take a while
        self._unregister()

    def _release(self) -> None:
        """Free the cluster of the job without a word to the store."""
        self._cancel_all()
        self._unsubscribe()
        self._unregister()

    def _unregister(self) -> None:
        """Give the workers back (their cleanup ends first) and leave the queue."""
        if self.leases is not None:
            self.leases.close()

    # -- housekeeping -------------------------------------------------------------------------
    def tick(self) -> None:
        """Housekeeping: timeout, stop request, checkpoint and heartbeat, worker refresh."""
        now = time.time()
        if self.deadline is not None and now >= self.deadline:
            self.log.error(f"job timed out after {self.timeout} s")
            message = f"job exceeded its timeout of {self.timeout} s"
            raise JobEnded(
                JobStatus.TIMED_OUT, {"type": "Timeout", "reason": "timeout", "message": message}
            )
        self._note_removals()
        self._check_workers(now)
        if now >= self._next_checkpoint:
            self._check_stop()
            self._refresh_workers()
            self._checkpoint()

    def _check_stop(self) -> None:
        """End the job if it was deleted or a stop was requested."""
        if not self.store.job_exists(self.api_name, self.job_id):
            raise JobDeleted(self.job_id)
        if self.store.stop_requested(self.api_name, self.job_id):
            self.log.info("stop requested")
            raise JobEnded(JobStatus.STOPPED)

    def _check_workers(self, now: float) -> None:
        """A job whose workers are all gone and none came back cannot finish: end it."""
        waited = self.pool.lost_all_for(now) if self.pool is not None else None
        if waited is not None:
            message = f"no worker for {waited:.0f} s: the cluster lost all its workers"
            self.log.error(message)
            error = {"type": "NoWorkers", "reason": "no_workers", "message": message}
            raise JobEnded(JobStatus.WORKER_ERROR, error)

    def _checkpoint(self) -> None:
        self.state.heartbeat = time.time()
        self.state.workers_running = len(self.workers)
        self._ckpt.flush(self.state)
        self._next_checkpoint = time.time() + self.settings.checkpoint_interval

    def _unsubscribe(self) -> None:
        self.losses.forget()


def _deadline(record: JobRecord, timeout: float | None) -> float | None:
    if not timeout:
        return None
    return (parse_iso(record.created_time) or time.time()) + float(timeout)
