"""Cutting a batch reference in halves, for poison item isolation.

A half keeps its parent's ``index``, appends ``0`` (left) or ``1`` (right) to its ``path``, and
knows the index in the job's input of its first item. Items and files are sliced; a delimited
batch's segments are narrowed (same byte range, more values skipped), so a worker still reads a
half with one ranged read and no value is parsed twice.

>>> left, right = halves(BatchRef(3, items=list("abcde"), first_item=15))
>>> (left.items, left.path, left.first_item), (right.items, right.path, right.first_item)
((['a', 'b'], '0', 15), (['c', 'd', 'e'], '1', 17))
"""

from __future__ import annotations

import logging

from dask_batchapi.sources.batches import BatchRef, Segment

logger = logging.getLogger(__name__)


def halves(ref: BatchRef) -> tuple[BatchRef, BatchRef]:
    """The left and right halves of a batch of two items or more (the right one is bigger
    when the size is odd)."""
    size = ref.size
    if size < 2:
        raise ValueError(f"a batch of {size} item(s) cannot be split")
    middle = size // 2
    return part(ref, 0, middle, "0"), part(ref, middle, size, "1")


def part(ref: BatchRef, start: int, stop: int, step: str) -> BatchRef:
    """Items ``[start, stop)`` of ``ref`` as the sub-batch ``ref.path + step``."""
    first = None if ref.first_item is None else ref.first_item + start
    path = ref.path + step
    if ref.items is not None:
        return BatchRef(ref.index, items=ref.items[start:stop], path=path, first_item=first)
    if ref.files is not None:
        return BatchRef(ref.index, files=ref.files[start:stop], path=path, first_item=first)
    segments = tuple(_narrow(ref.segments or (), start, stop))
    return BatchRef(ref.index, segments=segments, path=path, first_item=first)


def _narrow(segments: tuple[Segment, ...], start: int, stop: int):
    position = 0
    for segment in segments:
        low, high = max(start, position), min(stop, position + segment.take)
        if low < high:
            offset = low - position
            yield Segment(
                segment.url,
                segment.start,
                segment.end,
                segment.skip + offset,
                high - low,
                segment.first_value + offset,
                segment.start_line,
            )
        position += segment.take
