"""A job's input as a lazy, deterministic stream of batch references, and references as payloads.

The driver never reads data bytes: it turns a submission's source into :class:`BatchRef`
objects (the items themselves for ``item_list``, file URLs for ``file_path_lister``, byte-range
:class:`Segment` objects for ``delimited_files``), and workers turn references into payloads
with :func:`load_payloads`. Batch indexes are 0-based and stable across runs of the same input.

Listing rules live in :mod:`dask_batchapi.sources.listing`, the delimited JSON reader and its
invalid-JSON policy in :mod:`dask_batchapi.sources.delimited`.

>>> [ref.items for ref in iter_item_batches([1, 2, 3, 4, 5], batch_size=2)]
[[1, 2], [3, 4], [5]]
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from dask_batchapi.sources.delimited import (
    FileIndex,
    InvalidJSONError,
    granularity_for,
    index_file,
    read_segments,
    take_cached,
)
from dask_batchapi.sources.listing import filter_urls, glob_to_regex, list_files

__all__ = [
    "BatchRef",
    "FileIndex",
    "InvalidJSONError",
    "Segment",
    "filter_urls",
    "glob_to_regex",
    "granularity_for",
    "index_file",
    "iter_delimited_batches",
    "iter_file_batches",
    "iter_item_batches",
    "list_files",
    "load_payloads",
]

logger = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class Segment:
    """A run of consecutive JSON values in one delimited file.

    Parsing starts at byte ``start`` (a value boundary, ``start_line`` is its 1-based line, 0 if
    unknown), skips ``skip`` values and takes ``take``; reading stops at ``end`` (a value
    boundary; None: end of file). ``first_value`` is the index in the file of the first value
    taken.
    """

    url: str
    start: int
    end: int | None
    skip: int
    take: int
    first_value: int
    start_line: int = 0

    def __reduce__(self):
        # chunks of refs travel driver -> scheduler -> worker; dataclass pickling is 3x slower
        return Segment, (
            self.url,
            self.start,
            self.end,
            self.skip,
            self.take,
            self.first_value,
            self.start_line,
        )


@dataclass(frozen=True, slots=True)
class BatchRef:
    """A reference to one batch; exactly one of ``items``, ``files``, ``segments`` is set.

    ``path`` is empty for a batch of the input; a sub-batch cut from batch ``index`` by poison
    item isolation (:mod:`dask_batchapi.sources.split`) has the halves taken to reach it, as
    ``0``/``1`` characters (``"01"``: the right half of the left half). ``first_item`` is the
    index in the job's input of the batch's first item (None: unknown, in old records).
    """

    index: int
    items: list | None = None
    files: tuple[str, ...] | None = None
    segments: tuple[Segment, ...] | None = None
    path: str = ""
    first_item: int | None = None

    def __reduce__(self):
        return BatchRef, (
            self.index,
            self.items,
            self.files,
            self.segments,
            self.path,
            self.first_item,
        )

    @property
    def key(self) -> int | str:
        """What tells this batch from every other of the run: the index, or ``index.path``."""
        return f"{self.index}.{self.path}" if self.path else self.index

    @property
    def size(self) -> int:
        """Number of items, files or JSON values in the batch."""
        if self.items is not None:
            return len(self.items)
        if self.files is not None:
            return len(self.files)
        return sum(segment.take for segment in self.segments or ())

    def describe(self) -> list:
        """JSON-able description of the payload, for the dead letter.

        The items (item_list), the URLs (file_path_lister), or
        ``[{"url", "first_value", "count"}, ...]`` (delimited_files).
        """
        if self.items is not None:
            return list(self.items)
        if self.files is not None:
            return list(self.files)
        return [
            {"url": s.url, "first_value": s.first_value, "count": s.take}
            for s in self.segments or ()
        ]


def iter_item_batches(items: Iterable, batch_size: int, start_index: int = 0) -> Iterator[BatchRef]:
    """Batches of ``batch_size`` items; the last may be shorter.

    ``start_index`` is the index of the first batch to yield: earlier batches are skipped and
    every batch keeps the index it has in the whole list.

    >>> [(ref.index, ref.items) for ref in iter_item_batches(list("abcde"), 2, start_index=1)]
    [(1, ['c', 'd']), (2, ['e'])]
    """
    _check_batch_size(batch_size)
    stream = iter(items)  # a list, or the items streamed from the store: read once, in order
    for index in itertools.count():
        batch = list(itertools.islice(stream, batch_size))
        if not batch:
            return
        if index >= start_index:
            yield BatchRef(index, items=batch, first_item=index * batch_size)


def iter_file_batches(files: list[str], batch_size: int) -> Iterator[BatchRef]:
    """Batches of ``batch_size`` file URLs, in order; the last may be shorter.

    >>> [ref.files for ref in iter_file_batches(["s3://b/1", "s3://b/2", "s3://b/3"], 2)]
    [('s3://b/1', 's3://b/2'), ('s3://b/3',)]
    """
    _check_batch_size(batch_size)
    for start in range(0, len(files), batch_size):
        batch = tuple(files[start : start + batch_size])
        yield BatchRef(start // batch_size, files=batch, first_item=start)


def iter_delimited_batches(indexes: Iterable[FileIndex], batch_size: int) -> Iterator[BatchRef]:
    """Batches of exactly ``batch_size`` JSON values cut across file boundaries (the last may
    be shorter); a batch may hold segments of several files, empty files add nothing.

    Consumes ``indexes`` lazily, in order: memory is one file index plus one batch.
    """
    _check_batch_size(batch_size)
    index, pending, room = 0, [], batch_size
    for file_index in indexes:
        value = 0
        while value < file_index.count:
            take = min(room, file_index.count - value)
            pending.append(_segment(file_index, value, take))
            value, room = value + take, room - take
            if room == 0:
                yield BatchRef(index, segments=tuple(pending), first_item=index * batch_size)
                index, pending, room = index + 1, [], batch_size
    if pending:
        yield BatchRef(index, segments=tuple(pending), first_item=index * batch_size)


def _segment(file_index: FileIndex, first: int, take: int) -> Segment:
    step = file_index.granularity
    k = first // step
    k_end = -(-(first + take) // step)  # first sampled value at or after the last one taken
    offsets = file_index.offsets
    end = offsets[k_end] if k_end < len(offsets) else None
    line = file_index.lines[k] if file_index.lines else 0
    return Segment(file_index.url, offsets[k], end, first - k * step, take, first, line)


def load_payloads(
    refs: Sequence[BatchRef], storage_options: dict | None = None, cache_key: str | None = None
) -> list[list | BaseException]:
    """The payload of each reference, in order, or the exception that spoils it (runs on a
    worker). Bad JSON in one batch never fails its neighbours.

    Consecutive segments that continue each other in the same file, within a batch or
    across consecutive refs, are read with one ranged read and parsed once.

    >>> load_payloads([BatchRef(0, items=[1, 2]), BatchRef(1, files=("s3://b/k",))])
    [[1, 2], ['s3://b/k']]
    """
    results: list[list | BaseException] = [_direct_payload(ref) for ref in refs]
    for run in _segment_runs(refs):
        head = run[0][1]
        takes = [segment.take for _, segment in run]
        cached = take_cached(cache_key, head.url, head.first_value, takes) if cache_key else None
        outcomes = (
            cached
            if cached is not None
            else read_segments(
                head.url,
                head.start,
                run[-1][1].end,
                head.skip,
                takes,
                start_line=head.start_line,
                storage_options=storage_options,
            )
        )
        for (position, _), outcome in zip(run, outcomes, strict=True):
            if isinstance(results[position], BaseException):
                continue
            if isinstance(outcome, BaseException):
                results[position] = outcome
            else:
                results[position].extend(outcome)
    return results


def _direct_payload(ref: BatchRef) -> list:
    if ref.items is not None:
        return ref.items
    if ref.files is not None:
        return list(ref.files)
    return []


def _segment_runs(refs: Sequence[BatchRef]) -> Iterator[list[tuple[int, Segment]]]:
    """Group ``(ref position, segment)`` pairs into runs of values contiguous in one file."""
    run: list[tuple[int, Segment]] = []
    for position, ref in enumerate(refs):
        for segment in ref.segments or ():
            if run and not _continues(run[-1][1], segment):
                yield run
                run = []
            run.append((position, segment))
    if run:
        yield run


def _continues(previous: Segment, segment: Segment) -> bool:
    return (
        segment.url == previous.url and segment.first_value == previous.first_value + previous.take
    )


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
