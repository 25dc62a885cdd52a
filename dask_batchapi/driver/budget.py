"""The error budget of one run of a job: stop taking new batches once too many items failed.

:class:`BudgetGuard` counts the items of this run that are final (succeeded, or failed for good:
in the dead letter) and trips once ``error_budget`` is exceeded. The driver then starts nothing
new (no batch from the input, no retry, no isolated sub-batch), tells the workers to skip the
batches still queued in running chunks, lets the batches being handled finish, and ends the job
``completed_with_failures`` with ``error.reason: "error budget exceeded"``. Every batch not
final (never taken, cancelled, or waiting for a retry) is not in the ledger: ``resume`` runs it
(outputs already committed by isolated parts of it are not written twice). While a budget is
set, chunks are kept small (:meth:`BudgetGuard.cap_chunk`) so that the budget is looked at often. Each run has its own budget, so a resume
after a fix is not stopped at once by the failures of the run before.
"""

from __future__ import annotations

import logging

from dask_batchapi.spec.failures import ErrorBudget
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.status import JobState

logger = logging.getLogger(__name__)

REASON = "error budget exceeded"
_WINDOW_SHARE = 8  # see BudgetGuard.cap_chunk
_UNKNOWN_CAP = 32


class BudgetGuard:
    """Item counts of this run against the job's :class:`ErrorBudget` (None: no budget)."""

    def __init__(self, budget: ErrorBudget | None):
        self.budget = budget
        self.seen = self.failed = 0
        self.tripped = False

    def note(self, succeeded: int, failed: int) -> None:
        """Items that became final: ``succeeded`` processed, ``failed`` dead-lettered."""
        self.seen += succeeded + failed
        self.failed += failed
        if self.budget is not None and not self.tripped:
            self.tripped = self.budget.exceeded(self.failed, self.seen)

    def cap_chunk(self, size: int, remaining: int | None, slots: int) -> int:
        """A chunk size small enough that the budget is looked at often: with a budget, the
        window of chunks in flight holds at most about 1/8 of the remaining batches (at most
        ``_UNKNOWN_CAP`` batches a chunk while the input's size is unknown)."""
        if self.budget is None:
            return size
        if remaining is None:
            return min(size, _UNKNOWN_CAP)
        return min(size, max(1, -(-remaining // (_WINDOW_SHARE * slots))))

    def error(self) -> dict:
        """The job's ``error`` when the budget ended it."""
        message = (
            f"{self.failed} of {self.seen} items failed, over the error budget "
            f"({self.budget.describe() if self.budget else '-'}); no new batch was started"
        )
        return {
            "type": "ErrorBudgetExceeded",
            "reason": REASON,
            "message": message,
            "failed_items": self.failed,
            "seen_items": self.seen,
        }


def not_attempted(
    record: JobRecord, state: JobState, from_batch: int, unfinished: set[int]
) -> dict:
    """What a job stopped by its budget did not finish: the batches it ``started`` but did not
    finish (``unfinished``: failed ones waiting for a retry, queued ones cancelled, isolated
    ones partly run) and every batch from ``from_batch`` on that is not final.
    ``batches`` / ``items``: their counts, None when the input's size is unknown."""
    total = state.total_batch_count
    batches = None if total is None else max(0, total - state.succeeded - state.dead_lettered)
    count = record.item_count if record.retry_refs is None else None
    if count is None and record.submission.source_kind == "file_path_lister":
        count = record.file_count if record.retry_refs is None else None
    items = None
    if count is not None:
        items = max(0, count - state.items_succeeded - state.items_dead_lettered)
    return {
        "batches": batches,
        "items": items,
        "unfinished": sorted(unfinished),
        "from_batch": from_batch,
    }
