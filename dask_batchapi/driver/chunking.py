"""Batch coalescing: how many batches a driver puts in one chunk (one Dask task).

Tiny batches cost more in scheduling than in work, so a driver sends them in chunks sized from
the measured time per batch: a chunk should take about ``target_seconds``. The first chunks hold
one batch (measure first); the size is capped by ``max_batches`` and, near the end, by the
remaining work spread over every slot of the window, so the tail stays balanced across workers.

>>> sizer = ChunkSizer(target_seconds=0.25, max_batches=2048)
>>> sizer.size(remaining=None, slots=4)
1
>>> sizer.record(0.001)
>>> sizer.size(remaining=None, slots=4), sizer.size(remaining=40, slots=4)
(250, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dask_batchapi.spec.submission import Submission


class ChunkSizer:
    """The chunk size of a job, from the moving average of its batches' times."""

    def __init__(self, target_seconds: float, max_batches: int):
        self.target_seconds, self.max_batches = target_seconds, max_batches
        self.average: float | None = None  # seconds per batch, exponentially weighted

    def record(self, seconds: float) -> None:
        """One more batch took ``seconds``."""
        a = self.average
        self.average = seconds if a is None else 0.8 * a + 0.2 * seconds

    def size(
        self,
        remaining: int | None,
        slots: int,
        cap: Callable[[int, int | None, int], int] | None = None,
    ) -> int:
        """Batches for the next chunk; ``remaining`` batches not final or in flight (None:
        unknown yet), ``slots`` chunks the window holds, ``cap`` a further limit (the error
        budget keeps chunks small)."""
        if self.average is None:
            return 1  # measure first
        size = int(self.target_seconds / max(self.average, 1e-6))
        if remaining is not None:  # keep the tail balanced across workers
            size = min(size, math.ceil(remaining / max(1, slots)))
        if cap is not None:
            size = cap(size, remaining, slots)
        return max(1, min(size, self.max_batches))


def max_chunk_batches(submission: Submission, max_batches: int, max_items: int) -> int:
    """The most batches in one chunk: an item_list's items travel in the chunk, so they are
    bounded too (``max_items``)."""
    if submission.source_kind != "item_list":
        return max_batches
    return min(max_batches, max(1, max_items // submission.source.batch_size))
