"""Poison item isolation: a batch that used up its attempts is split down to its bad items.

With ``dead_letter.isolate_items`` (or ``batchapi.isolate-items``), :class:`BatchBook
<dask_batchapi.driver.outcomes.BatchBook>` hands a batch that would go to the dead letter here
instead. It is cut in halves (:func:`~dask_batchapi.sources.split.halves`), and each half runs
as a batch of its own (batch id ``<job>-<index>.<path>``, ``path`` the halves taken as ``0``/``1``
characters). A half that succeeds is processed (its output is its own part, see
:mod:`dask_batchapi.worker.outputs`); a half that fails is split again, down to single items,
and a single item that fails all its attempts goes to the dead letter as one item record.

Attempts: the input's batches and single items get ``max_receive_count`` attempts; a sub-batch
of two items or more gets ONE (its parent already failed all of its attempts; a failure splits
it at once). A poison item then costs about ``2 * log2(batch_size)`` extra calls, plus
``max_receive_count`` for itself.

A batch is final (in the ledger) once every part of it is: succeeded when all its items did
(a transient failure), dead-lettered when any item is in the dead letter. Memory: one small
counter per batch being split.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from dask_batchapi import config
from dask_batchapi.driver.ledger import ref_to_dict
from dask_batchapi.protocol import batch_id_for
from dask_batchapi.sources.batches import BatchRef
from dask_batchapi.sources.split import halves
from dask_batchapi.spec.failures import item_id
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.status import utcnow_iso

logger = logging.getLogger(__name__)


@dataclass
class _Split:
    """The parts of one batch still to finish, and the items done so far."""

    pending: int = 0
    succeeded: int = 0
    dead: int = 0


class Isolation:
    """Splits failing batches and tells when a split batch is final."""

    def __init__(self, job_id: str, batch_size: int, max_attempts: int, id_key: str | None):
        self.job_id, self.batch_size = job_id, batch_size
        self.max_attempts, self.id_key = max_attempts, id_key
        self._open: dict[int, _Split] = {}

    def attempts_for(self, ref: BatchRef) -> int:
        """Attempts a batch gets before it is split (or dead-lettered, a single item)."""
        return 1 if ref.path and ref.size > 1 else self.max_attempts

    def splits(self, ref: BatchRef) -> bool:
        return ref.size > 1

    def split(self, ref: BatchRef) -> tuple[BatchRef, BatchRef]:
        """The two halves to run in place of ``ref``."""
        if ref.first_item is None:  # a record written before items were numbered
            ref = dataclasses.replace(ref, first_item=ref.index * self.batch_size)
        self._open.setdefault(ref.index, _Split()).pending += 1 if ref.path else 2
        left, right = halves(ref)
        logger.debug("batch %s split in %d + %d items", ref.key, left.size, right.size)
        return left, right

    def open_batches(self) -> set[int]:
        return set(self._open)

    def part_done(self, ref: BatchRef, succeeded: int, dead: int) -> tuple[int, int] | None:
        """A part of a split batch is final: the batch's (succeeded, dead) items once all are."""
        split = self._open.get(ref.index)
        if split is None:  # a whole batch of one item (never split)
            return succeeded, dead
        split.pending -= 1
        split.succeeded += succeeded
        split.dead += dead
        if split.pending:
            return None
        del self._open[ref.index]
        return split.succeeded, split.dead

    def item_record(self, ref: BatchRef, err: tuple, item: Any, attempts: int, losses: int) -> dict:
        """The dead-letter record of one item (``ref`` is a batch of one)."""
        kind, message, tb = err
        if ref.items is not None:
            item = ref.items[0]
        elif ref.files is not None:
            item = ref.files[0]
        first = ref.first_item if ref.first_item is not None else ref.index * self.batch_size
        record = {
            "batch_id": batch_id_for(self.job_id, ref.index, ref.path),
            "index": ref.index,
            "item_index": first,
            "item": item,
            "payload": ref.describe() if ref.segments else [item],
            "error": f"{kind}: {message}",
            "error_type": kind,
            "message": message,
            "traceback": tb,
            "attempts": attempts,
            "worker_losses": losses,
            "time": utcnow_iso(),
            "ref": ref_to_dict(dataclasses.replace(ref, first_item=first)),
        }
        if self.id_key is not None:
            record["id"] = item_id(item, self.id_key)
        return record


def isolation_for(record: JobRecord) -> Isolation | None:
    """The job's isolation, if it asks for it (or the config does by default)."""
    sub = record.submission
    enabled = sub.isolate_items
    if enabled is None:
        enabled = bool(config.get("isolate-items"))
    if not enabled:
        return None
    return Isolation(record.job_id, sub.source.batch_size, record.max_attempts, sub.id_key)
