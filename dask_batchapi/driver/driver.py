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
import math
import os
import queue
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from distributed import Client, Future

from dask_batchapi import config
from dask_batchapi.cluster.backends import missing_resources
from dask_batchapi.driver.budget import BudgetGuard, not_attempted
from dask_batchapi.driver.init_deaths import InitDeaths
from dask_batchapi.driver.isolation import isolation_for
from dask_batchapi.driver.ledger import Checkpointer
from dask_batchapi.driver.log import DriverLog
from dask_batchapi.driver.losses import RemovalHub, error_dict, lost_info, timeout_info
from dask_batchapi.driver.outcomes import BatchBook, OutOfMemory
from dask_batchapi.driver.store_failure import end_on_store_failure
from dask_batchapi.driver.workers import LeaseView, WorkerLeases, idle_workers
from dask_batchapi.errors import LeaseLost, SourceError, StoreError
from dask_batchapi.protocol import (
    INIT_EVENT,
    TIMEOUT_EVENT,
    BatchError,
    ChunkResult,
    CompletionResult,
    JobContext,
    pack_chunk,
)
from dask_batchapi.sources.batches import BatchRef
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.status import JobState, JobStatus, parse_iso, utcnow_iso
from dask_batchapi.store.jobstore import JobStore
from dask_batchapi.worker.metrics import merge_metrics
from dask_batchapi.worker.plugin import JobPlugin, cancel_job, run_chunk_task, run_complete_task

logger = logging.getLogger(__name__)

_TICK = 0.2  # seconds the loop sleeps at most between looks at stop / timeout / checkpoint
_MEMORY_EVENT = "worker-restart-memory"  # logged by distributed's nanny when it kills for memory


class JobEnded(Exception):
    """Raised inside the loop to end the job early with ``status``."""

    def __init__(self, status: JobStatus, error: dict | None = None):
        super().__init__(status.value)
        self.status, self.error = status, error


class JobDeleted(Exception):
    """The job was deleted from the store while it ran: end without writing anything."""


class JobDriver:
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
    ):
        self.store, self.record, self.client = store, record, client
        self.resources = resources
        self._locate = locate  # the worker holding a batch's data (delimited files), if known  # Dask resources of every batch task (compute.gpu -> GPU)
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
        self._avg_batch: float | None = None
        self._last_worker: str | None = None
        self._ckpt = Checkpointer(store, self.api_name, self.job_id, state.run)
        self.log = DriverLog(self.api_name, self.job_id, self._ckpt)
        self.book = BatchBook(
            self.job_id,
            state,
            self._ckpt,
            self.log,
            max_attempts=record.max_attempts,
            max_losses=int(config.get("max-worker-losses")),
            max_ooms=int(config.get("max-oom-retries")),
            isolation=isolation_for(record),
            guard=BudgetGuard(submission.error_budget),
        )
        self._pulled = 0  # index after the last batch taken from the source (error budget)
        self._next_checkpoint = 0.0
        self._prefetch = int(config.get("prefetch"))
        self._chunk_target = float(config.get("chunk-target-seconds"))
        self._max_chunk = int(config.get("max-chunk-batches"))
        if submission.source_kind == "item_list":  # the items travel in the chunk: bound them too
            per_batch = submission.source.batch_size
            self._max_chunk = min(
                self._max_chunk, max(1, int(config.get("max-chunk-items")) // per_batch)
            )
        self._interval = float(config.get("checkpoint-interval"))
        self.workers: list[str] = []  # the workers leased to the job, its plugin set up
        self.leases: WorkerLeases | None = None
        self._suspect_running = False
        self._no_workers_since: float | None = None
        self._removals: queue.SimpleQueue = queue.SimpleQueue()
        self._counted_losses: set[str] = set()
        self._restrictions: dict[str, set[str]] = {}
        self._init_deaths = InitDeaths(
            int(config.get("max-worker-losses")),
            lambda: bool(self._events(INIT_EVENT, 0, "job_id", self.job_id)),
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
        self._watch_worker_removals()
        self._refresh_workers()
        self.log.info(f"job started on {len(self.workers)} worker(s)")
        self.state.move_to(JobStatus.RUNNING)
        self._checkpoint()

    def _lease_workers(self) -> None:
        """Hold at least one worker: wait ``pending`` in the cluster's queue while none is free."""
        self.leases = WorkerLeases(self.client, self.record, self.plugin, self.resources)
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
        self._no_workers_since = None  # queued is not lost
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

    # -- the window ---------------------------------------------------------------------------
    def _fill_window(self) -> None:
        limit = max(1, len(self.workers)) * self._prefetch
        while self.workers and len(self._inflight) < limit and not self._suspect_running:
            if self.book.suspect_next() and self._inflight:
                return  # a memory suspect runs alone on the whole job, so blame is certain
            chunk = self._next_chunk(self._chunk_size())
            if not chunk:
                return
            self._submit(chunk)
            self._suspect_running = len(chunk) == 1 and self.book.is_suspect(chunk[0].key)

    def _chunk_size(self) -> int:
        if self._avg_batch is None:
            return 1  # measure first
        size = int(self._chunk_target / max(self._avg_batch, 1e-6))
        remaining = self._remaining()
        if remaining is not None:  # keep the tail balanced across workers
            size = min(size, math.ceil(remaining / self._slots()))
        size = self.book.guard.cap_chunk(size, remaining, self._slots())
        return max(1, min(size, self._max_chunk))

    def _slots(self) -> int:
        return max(1, len(self.workers)) * self._prefetch

    def _remaining(self) -> int | None:
        total = self.state.total_batch_count
        if total is None:
            return None
        return total - self.state.succeeded - self.state.dead_lettered - self.state.in_flight

    def _next_chunk(self, size: int) -> list[BatchRef]:
        if self.book.guard.tripped:
            return []  # over the error budget: nothing new starts
        chunk = self.book.next_retries(size)
        if len(chunk) == 1 and self.book.is_suspect(chunk[0].key):
            return chunk  # a memory suspect runs alone
        while not self._source_done and len(chunk) < size:
            ref = next(self._source, None)
            if ref is None:
                self._source_done = True
            else:
                chunk.append(ref)
                self._pulled = ref.index + 1
        return chunk

    def _submit(self, chunk: list[BatchRef]) -> None:
        where = self._placement(chunk)
        future = self.client.submit(
            run_chunk_task,
            self.plugin.name,
            pack_chunk(chunk),
            pure=False,
            resources=self.resources,
            **where,
        )
        self._inflight[future.key] = (future, chunk, time.time())
        if where:
            self._restrictions[future.key] = set(where["workers"])
        self.state.in_flight += len(chunk)
        future.add_done_callback(self._done.put)

    def _placement(self, chunk: list[BatchRef]) -> dict:
        """The one leased worker a chunk runs on: the one that already holds the chunk's data
        when it has room, else the least busy. Loose: should that worker die, Dask may rerun
        the task elsewhere instead of waiting forever for it (a result lost after it finished);
        on a worker not leased to the job it finds no plugin and fails at once, as a loss."""
        load = self._load()
        preferred = self._locate(chunk[0]) if self._locate else None
        if not (preferred in self.workers and load[preferred] < self._prefetch):
            preferred = min(self.workers, key=lambda w: load[w])
        return {"workers": [preferred], "allow_other_workers": True}

    def _load(self) -> Counter:
        """Chunks in flight per worker."""
        return Counter(w for key in self._inflight for w in self._restrictions.get(key, ()))

    def _give_back_idle(self) -> None:
        """No more batches to send: give back the workers that run none of ours."""
        if not self._source_done or self.book.retry or self.leases is None:
            return
        idle = idle_workers(self.workers, self._load(), self._last_worker)
        if idle:
            self.leases.release(idle)
            self.workers = [w for w in self.workers if w not in idle]

    def _wait(self, timeout: float) -> list[Future]:
        try:
            done = [self._done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                return done

    # -- outcomes -----------------------------------------------------------------------------
    def _handle(self, futures: list[Future]) -> None:
        entries = [self._inflight.pop(f.key) for f in futures if f.key in self._inflight]
        if entries and self._suspect_running:
            self._suspect_running = any(
                len(c) == 1 and self.book.is_suspect(c[0].key)
                for _, c, _ in self._inflight.values()
            )
        for f in futures:
            self._restrictions.pop(f.key, None)
            if f.status == "finished":
                self._counted_losses.discard(f.key)
        finished = [e for e in entries if e[0].status == "finished"]
        for (future, chunk, since), result in zip(finished, self._gather(finished), strict=True):
            if result is None:
                self._chunk_lost(chunk, future, since)
            else:
                self._handle_chunk(chunk, result)
        for future, chunk, since in entries:
            if future.status != "finished":
                self._chunk_lost(chunk, future, since)

    def _gather(self, finished: list[tuple]) -> list[ChunkResult | None]:
        """Results of finished futures in one round trip; None for one whose data was lost."""
        if not finished:
            return []
        try:
            return self.client.gather([e[0] for e in finished])
        except Exception:  # noqa: BLE001 - a result lost with its worker: sort them one by one
            return [self._one_result(e[0]) for e in finished]

    def _one_result(self, future: Future) -> Any:
        try:
            return future.result()  # only called on finished futures
        except Exception:  # noqa: BLE001
            return None

    def _handle_chunk(self, chunk: list[BatchRef], result: ChunkResult) -> None:
        self.state.in_flight -= len(chunk)
        self._take_extras(result)
        if result.init_error is not None:
            self._init_failed(result.init_error)
        by_key = {ref.key: ref for ref in chunk}
        for outcome in result.outcomes:
            self._record_time(outcome.seconds)
            if outcome.ok:
                self.book.succeeded(by_key[outcome.key])
                self._last_worker = result.worker
            else:
                item = result.failed_items.get(outcome.key)
                self.book.failed(by_key[outcome.key], outcome.error, item)
        for key in result.not_run:
            self.book.retry.append(by_key[key])
        if result.foreign:  # its worker is gone: look at the leases before the retry
            self._refresh_workers()

    def _init_failed(self, error: BatchError) -> None:
        """``Handler.__init__`` (or installing the project's dependencies) failed: the end."""
        if error.kind == "DependencyError":  # the project's requirements failed to install
            self.log.error(
                f"installing dependencies failed: {error.message}", output=error.traceback
            )
            reason = {"type": error.kind, "message": error.message, "reason": "dependencies"}
            raise JobEnded(JobStatus.WORKER_ERROR, reason)
        self.log.error(f"Handler.__init__ raised {error.line}", traceback=error.traceback)
        raise JobEnded(JobStatus.WORKER_ERROR, error.status_error("Handler.__init__"))

    def _take_extras(self, result: ChunkResult | CompletionResult) -> None:
        """A result's log lines, custom metrics and the jobs handler code submitted."""
        self._ckpt.logs.extend(result.logs)
        self.state.triggered.extend(result.triggered)
        if result.metrics:
            limit = int(config.get("custom-metrics-max-series"))
            self.state.custom_metrics = merge_metrics(
                self.state.custom_metrics, result.metrics, limit
            )

    def _record_time(self, seconds: float) -> None:
        self.state.batch_seconds += seconds
        self.state.attempts_timed += 1
        a = self._avg_batch
        self._avg_batch = seconds if a is None else 0.8 * a + 0.2 * seconds

    def _chunk_lost(self, chunk: list[BatchRef], future: Future, since: float) -> None:
        """A chunk whose task failed as a whole: its worker died, or it was cancelled."""
        self.state.in_flight -= len(chunk)
        self._refresh_workers()
        err = lost_info(future)
        timed_out = self._events(TIMEOUT_EVENT, since, "job_id", self.job_id)
        timed_out = {e["index"] for e in timed_out}  # batch keys
        if self._events(_MEMORY_EVENT, since):
            self.log.warning(f"a worker ran out of memory; {len(chunk)} batch(es) rerun")
            self.book.out_of_memory(chunk, ("WorkerOutOfMemory", err[1], ""))
            return
        init_error = self._init_deaths.lost()
        if init_error is not None:
            self.log.error(init_error["message"])
            raise JobEnded(JobStatus.WORKER_ERROR, init_error)
        counted = future.key in self._counted_losses
        self._counted_losses.discard(future.key)
        self.log.warning(f"{len(chunk)} batch(es) lost with their worker: {err[0]}: {err[1]}")
        for ref in chunk:
            if ref.key in timed_out:
                self.book.failed(ref, timeout_info(self.plugin.context.batch_timeout))
            else:
                self.book.lost(ref, err, counted=counted)

    def _watch_worker_removals(self) -> None:
        """Hear of workers removed mid-task: a cluster that reschedules tasks by itself
        (``allowed-failures`` > 0) never fails our futures, yet those batches ran on a lost
        worker and must be counted as lost."""
        RemovalHub.listen(self.client, self._removals)

    def _note_removals(self) -> None:
        while True:
            try:
                _, event = self._removals.get_nowait()
            except queue.Empty:
                return
            if not isinstance(event, dict) or event.get("action") != "remove-worker":
                continue
            for key in set(event.get("processing-tasks", ())) & set(self._inflight):
                if key in self._counted_losses:
                    continue
                self._counted_losses.add(key)
                future, chunk, _ = self._inflight[key]
                self.log.warning(f"{len(chunk)} batch(es) lost with worker {event.get('worker')}")
                for ref in chunk:
                    self.book.count_loss(ref)

    def _events(self, topic: str, since: float, key: str | None = None, value: Any = None):
        try:
            events = self.client.get_events(topic)
        except Exception:  # noqa: BLE001 - the scheduler may be unreachable right now
            return []
        return [m for t, m in events if t >= since - 1 and (key is None or m.get(key) == value)]

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
        if self.workers:
            self._no_workers_since = None
            return
        self._no_workers_since = self._no_workers_since or now
        waited = now - self._no_workers_since
        if waited > float(config.get("no-workers-timeout")):
            message = f"no worker for {waited:.0f} s: the cluster lost all its workers"
            self.log.error(message)
            raise JobEnded(
                JobStatus.WORKER_ERROR,
                {"type": "NoWorkers", "reason": "no_workers", "message": message},
            )

    def _checkpoint(self) -> None:
        self.state.heartbeat = time.time()
        self.state.workers_running = len(self.workers)
        self._ckpt.flush(self.state)
        self._next_checkpoint = time.time() + self._interval

    def _refresh_workers(self) -> None:
        """The workers leased to this job (more when others freed up); chunks pinned to one
        that is gone are queued again."""
        if self.leases is None:
            return
        gone = set(self.workers)
        self.workers = self.leases.poll().ready
        gone -= set(self.workers)
        if gone:
            self._resubmit_orphans(set(self.workers))

    def _resubmit_orphans(self, alive: set[str]) -> None:
        """Queue again the chunks still waiting for workers that are gone."""
        for key, (future, chunk, _) in list(self._inflight.items()):
            if future.done() or self._restrictions.get(key, alive) & alive:
                continue
            del self._inflight[key]
            self.state.in_flight -= len(chunk)
            future.cancel()
            self.book.retry.extend(chunk)

    def _unsubscribe(self) -> None:
        RemovalHub.forget(self.client, self._removals)

    def _cancel_queued(self) -> None:
        """The error budget tripped: batches still queued in running chunks do not start."""
        try:
            self.client.run(cancel_job, self.plugin.name)
        except Exception as exc:  # noqa: BLE001 - the chunks then just run to their end
            logger.debug("cancelling queued batches of %s failed: %s", self.job_id, exc)

    def _cancel_all(self) -> None:
        futures = [e[0] for e in self._inflight.values()]
        self._inflight.clear()
        if not futures:
            return
        try:
            if self.workers:
                self.client.run(cancel_job, self.plugin.name, workers=self.workers)
            self.client.cancel(futures, force=True)
        except Exception as exc:  # noqa: BLE001 - the cluster may already be gone
            logger.debug("cancelling futures of %s failed: %s", self.job_id, exc)


def _deadline(record: JobRecord, timeout: float | None) -> float | None:
    if not timeout:
        return None
    return (parse_iso(record.created_time) or time.time()) + float(timeout)
