"""The window of a job's driver: the chunks in flight, and what their results say.

:class:`ChunkWindow` keeps at most ``prefetch`` chunks per leased worker in flight, cuts each
chunk from the retry queue and the source (sized by :class:`~.chunking.ChunkSizer`), pins it to
a worker (:class:`~.workers.WorkerSet`), and books every batch of every result
(:class:`~.outcomes.BatchBook`): successes, failed attempts, batches not run, chunks lost with
their workers (:class:`~.losses.LossWatcher`). :class:`~.driver.JobDriver` builds on it with the
job's lifecycle: leases, phases, housekeeping, the final status.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

from distributed import Future

from dask_batchapi.driver.losses import lost_info, timeout_info
from dask_batchapi.driver.outcomes import JobEnded
from dask_batchapi.protocol import (
    TIMEOUT_EVENT,
    BatchError,
    ChunkResult,
    CompletionResult,
    pack_chunk,
)
from dask_batchapi.sources.batches import BatchRef
from dask_batchapi.status import JobStatus
from dask_batchapi.worker.metrics import merge_metrics
from dask_batchapi.worker.plugin import cancel_job, run_chunk_task

logger = logging.getLogger(__name__)

_MEMORY_EVENT = "worker-restart-memory"  # logged by distributed's nanny when it kills for memory


class ChunkWindow:
    """Chunks in flight and their outcomes (the state it works on is set up by the driver:
    ``client, plugin, resources, state, book, log, sizer, pool, losses, settings, _source,
    _inflight, _done, _ckpt, _locate, _init_deaths``)."""

    def _fill_window(self) -> None:
        while self.workers and len(self._inflight) < self._slots() and not self._suspect_running:
            if self.book.suspect_next() and self._inflight:
                return  # a memory suspect runs alone on the whole job, so blame is certain
            chunk = self._next_chunk(self._chunk_size())
            if not chunk:
                return
            self._submit(chunk)
            self._suspect_running = len(chunk) == 1 and self.book.is_suspect(chunk[0].key)

    def _chunk_size(self) -> int:
        return self.sizer.size(self._remaining(), self._slots(), self.book.guard.cap_chunk)

    def _slots(self) -> int:
        return max(1, len(self.workers)) * self.settings.prefetch

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
        where = self.pool.place(self._locate(chunk[0]) if self._locate else None)
        future = self.client.submit(
            run_chunk_task,
            self.plugin.name,
            pack_chunk(chunk),
            pure=False,
            resources=self.resources,
            **where,
        )
        self._inflight[future.key] = (future, chunk, time.time())
        self.pool.pinned(future.key, where)
        self.state.in_flight += len(chunk)
        future.add_done_callback(self._done.put)

    def _give_back_idle(self) -> None:
        """No more batches to send: give back the workers that run none of ours."""
        if self._source_done and not self.book.retry and self.pool is not None:
            self.pool.give_back_idle(self._last_worker)

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
            self.pool.unpinned(f.key)
            if f.status == "finished":
                self.losses.finished(f.key)
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
            limit = self.settings.custom_metrics_max_series
            self.state.custom_metrics = merge_metrics(
                self.state.custom_metrics, result.metrics, limit
            )

    def _record_time(self, seconds: float) -> None:
        self.state.batch_seconds += seconds
        self.state.attempts_timed += 1
        self.sizer.record(seconds)

    def _chunk_lost(self, chunk: list[BatchRef], future: Future, since: float) -> None:
        """A chunk whose task failed as a whole: its worker died, or it was cancelled."""
        self.state.in_flight -= len(chunk)
        self._refresh_workers()
        err = lost_info(future)
        timed_out = self.losses.events(TIMEOUT_EVENT, since, "job_id", self.job_id)
        timed_out = {e["index"] for e in timed_out}  # batch keys
        if self.losses.events(_MEMORY_EVENT, since):
            self.log.warning(f"a worker ran out of memory; {len(chunk)} batch(es) rerun")
            self.book.out_of_memory(chunk, ("WorkerOutOfMemory", err[1], ""))
            return
        init_error = self._init_deaths.lost()
        if init_error is not None:
            self.log.error(init_error["message"])
            raise JobEnded(JobStatus.WORKER_ERROR, init_error)
        counted = self.losses.was_counted(future.key)
        self.log.warning(f"{len(chunk)} batch(es) lost with their worker: {err[0]}: {err[1]}")
        for ref in chunk:
            if ref.key in timed_out:
                self.book.failed(ref, timeout_info(self.plugin.context.batch_timeout))
            else:
                self.book.lost(ref, err, counted=counted)

    def _note_removals(self) -> None:
        """Chunks that were running on a worker the scheduler removed: their batches' runs were
        lost (Dask may rerun them by itself; they count once)."""
        for key, worker in self.losses.removed_chunks(self._inflight):
            chunk = self._inflight[key][1]
            self.log.warning(f"{len(chunk)} batch(es) lost with worker {worker}")
            for ref in chunk:
                self.book.count_loss(ref)

    def _refresh_workers(self) -> None:
        """The workers leased to this job (more when others freed up); chunks pinned to one
        that is gone are queued again."""
        if self.pool is not None and self.pool.refresh():
            for key in self.pool.orphaned(list(self._inflight)):
                future, chunk, _ = self._inflight[key]
                if future.done():
                    continue
                del self._inflight[key]
                self.pool.unpinned(key)
                self.state.in_flight -= len(chunk)
                future.cancel()
                self.book.retry.extend(chunk)

    @property
    def workers(self) -> list[str]:
        """The workers leased to the job (its plugin set up there)."""
        return self.pool.workers if self.pool is not None else []

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
