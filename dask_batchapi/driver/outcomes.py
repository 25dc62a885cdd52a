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
"""

from __future__ import annotations

import logging
from collections import deque

from dask_batchapi.driver.ledger import Checkpointer, ref_to_dict
from dask_batchapi.driver.log import DriverLog
from dask_batchapi.sources.batches import BatchRef
from dask_batchapi.status import JobState, utcnow_iso
from dask_batchapi.worker.plugin import batch_id_for

logger = logging.getLogger(__name__)


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
    ):
        self.job_id, self.state, self.ckpt, self.log = job_id, state, ckpt, log
        self.max_attempts, self.max_losses, self.max_ooms = max_attempts, max_losses, max_ooms
        self.retry: deque[BatchRef] = deque()
        self._attempts: dict[int, int] = {}
        self._losses: dict[int, int] = {}
        self._ooms: dict[int, int] = {}
        self._suspects: set[int] = set()  # rerun alone: they were in a chunk that ran out of memory

    def next_retries(self, size: int) -> list[BatchRef]:
        """Up to ``size`` batches to run again; a memory suspect always runs alone."""
        chunk: list[BatchRef] = []
        while self.retry and len(chunk) < size:
            if self.retry[0].index in self._suspects:
                return chunk or [self.retry.popleft()]
            chunk.append(self.retry.popleft())
        return chunk

    def is_suspect(self, index: int) -> bool:
        return index in self._suspects

    def suspect_next(self) -> bool:
        """Whether the next batch to run is a memory suspect (it must run alone)."""
        return bool(self.retry) and self.retry[0].index in self._suspects

    def succeeded(self, index: int) -> None:
        self.state.succeeded += 1
        self.ckpt.succeeded.append(index)
        self._forget(index)

    def failed(self, ref: BatchRef, err: tuple) -> None:
        """A failed handler attempt (an exception or a batch timeout)."""
        self.state.failed += 1
        attempts = self._attempts.get(ref.index, 0) + 1
        self._attempts[ref.index] = attempts
        if attempts < self.max_attempts:
            kind, message, _ = err
            self.log.warning(
                f"batch {batch_id_for(self.job_id, ref.index)} attempt {attempts} failed: "
                f"{kind}: {message}; retrying"
            )
            self.retry.append(ref)
        else:
            self.dead_letter(ref, err)

    def count_loss(self, ref: BatchRef) -> int:
        """Count one run of the batch lost with its worker (Dask may rerun it by itself)."""
        self.state.lost += 1
        losses = self._losses.get(ref.index, 0) + 1
        self._losses[ref.index] = losses
        return losses

    def lost(self, ref: BatchRef, err: tuple, counted: bool = False) -> None:
        """The batch's worker died under it; rerun it without spending an attempt."""
        losses = self._losses.get(ref.index, 0) if counted else self.count_loss(ref)
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
        if len(chunk) == 1 and chunk[0].index in self._suspects:
            [ref] = chunk
            ooms = self._ooms.get(ref.index, 0) + 1
            self._ooms[ref.index] = ooms
            if ooms > self.max_ooms:
                raise OutOfMemory(
                    f"batch {batch_id_for(self.job_id, ref.index)} ran its worker out of memory "
                    f"{ooms + 1} times: {err[1]}"
                )
        self._suspects.update(ref.index for ref in chunk)
        self.retry.extendleft(reversed(chunk))

    def dead_letter(self, ref: BatchRef, err: tuple) -> None:
        kind, message, tb = err
        batch_id = batch_id_for(self.job_id, ref.index)
        attempts = self._attempts.get(ref.index, 0)
        self.state.dead_lettered += 1
        self.ckpt.dead_lettered.append(ref.index)
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

    def _forget(self, index: int) -> None:
        self._attempts.pop(index, None)
        self._losses.pop(index, None)
        self._ooms.pop(index, None)
        self._suspects.discard(index)
