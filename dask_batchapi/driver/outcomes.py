"""What happened to each batch: successes, failed attempts, losses, and the dead letter.

:class:`BatchBook` owns the per-batch counters of a running job and the queue of batches to run
again. Each failure kind has its own budget (DESIGN §5, "failure taxonomy"):

* a handler exception (or a batch timeout) spends one of the batch's ``max_receive_count``
  attempts; out of attempts, the batch goes to the dead letter;
* a lost worker (the process died mid-chunk) does not spend an attempt; after
  ``max-worker-losses`` losses the batch goes to the dead letter as ``WorkerLost``;
* out of memory (the nanny killed the worker for its memory limit): the chunk's batches are
  rerun one per task, to find the culprit; a batch that runs a worker out of memory again ends
  the job ``worker_oom``.

Counters exist only for batches in flight or waiting for a rerun, so memory is O(window).
Counters are keyed by :attr:`BatchRef.key` (a batch index, or ``index.path`` for a sub-batch of
poison item isolation, :mod:`dask_batchapi.driver.isolation`). Item counts feed the job's error
budget (:mod:`dask_batchapi.driver.budget`).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from dask_batchapi.driver.budget import BudgetGuard
from dask_batchapi.driver.isolation import Isolation
from dask_batchapi.driver.ledger import Checkpointer, ref_to_dict
from dask_batchapi.driver.log import DriverLog
from dask_batchapi.protocol import batch_id_for
from dask_batchapi.sources.batches import BatchRef
from dask_batchapi.status import JobState, JobStatus, utcnow_iso

logger = logging.getLogger(__name__)


class JobEnded(Exception):
    """Raised inside the loop to end the job early with ``status``."""

    def __init__(self, status: JobStatus, error: dict | None = None):
        super().__init__(status.value)
        self.status, self.error = status, error


class JobDeleted(Exception):
    """The job was deleted from the store while it ran: end without writing anything."""


class OutOfMemory(Exception):
    """A batch ran its worker out of memory more often than allowed."""


class BatchBook:
    """Per-batch outcomes of one run of a job, written into ``state`` and the checkpointer."""

    def __init__(
        self,
        job_id: str,
        state: JobState,
        ckpt: Checkpointer,
        log: DriverLog,
        *,
        max_attempts: int,
        max_losses: int,
        max_ooms: int,
        isolation: Isolation | None = None,
        guard: BudgetGuard | None = None,
    ):
        self.job_id, self.state, self.ckpt, self.log = job_id, state, ckpt, log
        self.max_attempts, self.max_losses, self.max_ooms = max_attempts, max_losses, max_ooms
        self.isolation = isolation
        self.guard = guard or BudgetGuard(None)
        self.retry: deque[BatchRef] = deque()
        self._attempts: dict[int | str, int] = {}
        self._losses: dict[int | str, int] = {}
        self._ooms: dict[int | str, int] = {}
        self._suspects: set[int | str] = set()  # rerun alone: in a chunk that ran out of memory

    def next_retries(self, size: int) -> list[BatchRef]:
        """Up to ``size`` batches to run again; a memory suspect always runs alone."""
        chunk: list[BatchRef] = []
        while self.retry and len(chunk) < size:
            if self.retry[0].key in self._suspects:
                return chunk or [self.retry.popleft()]
            chunk.append(self.retry.popleft())
        return chunk

    def is_suspect(self, key: int | str) -> bool:
        return key in self._suspects

    def suspect_next(self) -> bool:
        """Whether the next batch to run is a memory suspect (it must run alone)."""
        return bool(self.retry) and self.retry[0].key in self._suspects

    def open_batches(self) -> set[int]:
        """Batches being isolated (some of their parts are not final)."""
        return self.isolation.open_batches() if self.isolation else set()

    def succeeded(self, ref: BatchRef) -> None:
        self.state.items_succeeded += ref.size
        self.guard.note(ref.size, 0)
        self._forget(ref.key)
        if ref.path:
            self._part_final(ref, ref.size, 0)
        else:
            self._batch_final(ref.index, ref.size, 0)

    def failed(self, ref: BatchRef, err: tuple, item: Any = None) -> None:
        """A failed handler attempt (an exception or a batch timeout); ``item``: the one item
        of a one-item delimited batch, as the worker read it (for the dead letter)."""
        self.state.failed += 1
        attempts = self._attempts.get(ref.key, 0) + 1
        self._attempts[ref.key] = attempts
        limit = self.isolation.attempts_for(ref) if self.isolation else self.max_attempts
        if attempts < limit:
            kind, message, _ = err
            self.log.warning(
                f"batch {batch_id_for(self.job_id, ref.index, ref.path)} attempt {attempts} "
                f"failed: {kind}: {message}; retrying"
            )
            self.retry.append(ref)
        else:
            self.dead_letter(ref, err, item)

    def count_loss(self, ref: BatchRef) -> int:
        """Count one run of the batch lost with its worker (Dask may rerun it by itself)."""
        self.state.lost += 1
        losses = self._losses.get(ref.key, 0) + 1
        self._losses[ref.key] = losses
        return losses

    def lost(self, ref: BatchRef, err: tuple, counted: bool = False) -> None:
        """The batch's worker died under it; rerun it without spending an attempt."""
        losses = self._losses.get(ref.key, 0) if counted else self.count_loss(ref)
        if losses > self.max_losses:
            self.dead_letter(ref, err)
        else:
            self.retry.append(ref)

    def out_of_memory(self, chunk: list[BatchRef], err: tuple) -> None:
        """The chunk's worker was killed for its memory; raises OutOfMemory past the budget.

        Only a suspect that ran alone on the whole job is certainly the culprit and is charged;
        every other batch of a lost chunk becomes a suspect and reruns alone.
        """
        self.state.lost += len(chunk)
        if len(chunk) == 1 and chunk[0].key in self._suspects:
            [ref] = chunk
            ooms = self._ooms.get(ref.key, 0) + 1
            self._ooms[ref.key] = ooms
            if ooms > self.max_ooms:
                raise OutOfMemory(
                    f"batch {batch_id_for(self.job_id, ref.index)} ran its worker out of memory "
                    f"{ooms + 1} times: {err[1]}"
                )
        self._suspects.update(ref.key for ref in chunk)
        self.retry.extendleft(reversed(chunk))

    def dead_letter(self, ref: BatchRef, err: tuple, item: Any = None) -> None:
        if self.isolation is not None:
            self._isolate(ref, err, item)
            return
        kind, message, tb = err
        batch_id = batch_id_for(self.job_id, ref.index)
        attempts = self._attempts.get(ref.index, 0)
        self.state.items_dead_lettered += ref.size
        self.guard.note(0, ref.size)
        self._batch_final(ref.index, 0, ref.size)
        self.ckpt.dead_records.append(
            {
                "batch_id": batch_id,
                "index": ref.index,
                "payload": ref.describe(),
                "error": f"{kind}: {message}",
                "error_type": kind,
                "message": message,
                "traceback": tb,
                "attempts": attempts,
                "worker_losses": self._losses.get(ref.index, 0),
                "time": utcnow_iso(),
                "ref": ref_to_dict(ref),
            }
        )
        self._forget(ref.index)
        self.log.error(f"batch {batch_id} failed after {attempts} attempt(s): {kind}: {message}")

    def _isolate(self, ref: BatchRef, err: tuple, item: Any) -> None:
        """Split a batch out of attempts; a single item goes to the dead letter alone."""
        iso = self.isolation
        attempts, losses = self._attempts.get(ref.key, 0), self._losses.get(ref.key, 0)
        self._forget(ref.key)
        batch_id = batch_id_for(self.job_id, ref.index, ref.path)
        if iso.splits(ref):
            self.log.info(f"batch {batch_id} failed: {err[0]}; splitting it to isolate bad items")
            self.retry.extend(iso.split(ref))
            return
        record = iso.item_record(ref, err, item, attempts, losses)
        self.ckpt.dead_records.append(record)
        self.state.items_dead_lettered += 1
        self.guard.note(0, 1)
        self.log.error(
            f"item {record['item_index']} (batch {batch_id}) failed after {attempts} attempt(s): "
            f"{err[0]}: {err[1]}"
        )
        self._part_final(ref, 0, 1)

    def _part_final(self, ref: BatchRef, succeeded: int, dead: int) -> None:
        done = self.isolation.part_done(ref, succeeded, dead) if self.isolation else None
        if done is not None:
            self._batch_final(ref.index, *done)

    def _batch_final(self, index: int, succeeded: int, dead: int) -> None:
        """Batch ``index`` is final: in the ledger, dead-lettered if any of its items is."""
        if dead:
            self.state.dead_lettered += 1
            self.ckpt.dead_lettered.append(index)
        else:
            self.state.succeeded += 1
            self.ckpt.succeeded.append(index)
        self.ckpt.items_succeeded += succeeded
        self.ckpt.items_dead_lettered += dead

    def _forget(self, index: int | str) -> None:
        self._attempts.pop(index, None)
        self._losses.pop(index, None)
        self._ooms.pop(index, None)
        self._suspects.discard(index)
