"""Delimited JSON files: streams of JSON values, counted on workers, read back by byte range.

A delimited file is a stream of JSON values, as in Cortex: one value per line (JSON Lines),
several values on one line, one value spread over many lines and blank lines are all valid.
Values are separated by JSON whitespace and parsed with ``json.JSONDecoder.raw_decode``; a
UTF-8 byte-order mark at the start of a file is skipped. Byte offsets are exact for any UTF-8
(bytes that are not UTF-8 are carried through as surrogate escapes and never shift an offset).

:func:`index_file` streams a whole file once and returns a :class:`FileIndex`: how many values
the file holds and the byte offset (and line) where every ``granularity``-th value starts.
:func:`read_segments` later parses values back from one byte range, starting at such an offset.

Invalid JSON policy
-------------------
A bad spot never stops the index and never shifts the values around it. When a value cannot be
parsed, the *bad stretch* -- from where that value starts to the end of the line on which the
parser gave up (or the end of the file if no newline follows) -- counts as exactly ONE value.
Parsing resumes after that newline. The index counts the stretch like any other value, so
batches are cut exactly as if it were good; when the batch holding it is loaded, that batch
(and only that batch) fails with :class:`InvalidJSONError`, which names the line and byte where
the bad value starts (and where the parser gave up, when that is on a later line)::

    s3://b/data/2.jsonl: invalid JSON at line 3 (byte 40): Expecting value (parser stopped at line 5, byte 812)

Every other value of the file is delivered exactly once. The one cost of the policy: a value
that is broken by a missing closing bracket swallows the lines up to where the parser noticed,
so the good values on those lines fail with it instead of being delivered.

Reading is the same code for the index and for the load, and its outcome does not depend on
where reads are cut: a value that ends near the end of the buffered text, or an error that
could be a truncation (no newline after it yet), is retried with more bytes before it is
believed. Memory is one read block (4 MiB, doubled while a single value is larger) plus the
value being parsed, for any file size.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from fsspec.core import url_to_fs

from dask_batchapi.errors import SourceError
from dask_batchapi.sources.jsontext import (
    BLOCK_SIZE,
    BlockReader,
    Cursor,
    InvalidJSONError,
    bad_position,
    missing_error,
    next_value,
    read_range,
)

__all__ = [
    "FileIndex",
    "InvalidJSONError",
    "granularity_for",
    "index_file",
    "read_segments",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileIndex:
    """Where the values of one delimited file start.

    ``offsets[k]`` is the byte offset of value number ``k * granularity`` and ``lines[k]`` the
    1-based line it starts on (``lines`` may be empty: line numbers then go unreported).
    """

    url: str
    count: int
    offsets: tuple[int, ...]
    granularity: int
    size: int
    lines: tuple[int, ...] = ()


def granularity_for(batch_size: int) -> int:
    """The index sampling step for batches of ``batch_size`` values.

    A batch is read from the sampled offset at or before its first value to the one at or
    after its last, so it parses up to ``granularity - 1`` extra values on each side. With
    ``batch_size // 8`` that over-read stays under a quarter of the batch itself, while the
    index holds only about 8 offsets per batch. The cap of 256 bounds the over-read of large
    batches to a few hundred values; an offset per 256 values (~0.2 bytes per value) is still
    a negligible index.

    >>> granularity_for(1), granularity_for(1000), granularity_for(100_000)
    (1, 125, 256)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return max(1, min(256, batch_size // 8))


class _Bad:
    """A bad stretch remembered by the index cache (never a JSON value, so never confused)."""

    __slots__ = ("byte", "line", "reason")

    def __init__(self, byte: int, line: int, reason: str):
        self.byte, self.line, self.reason = byte, line, reason


class ParsedCache:
    """Values that :func:`index_file` parsed anyway, kept on the worker for the batch reads
    that follow, so a value is parsed once, not twice, and read from storage once.

    Keyed by a cache key (the job id: files may change between jobs) and URL; bounded by the
    source bytes of the files held (``batchapi.index-cache-bytes``), least recently used out.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[int, list]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def budget() -> int:
        import dask.config

        return int(dask.config.get("batchapi.index-cache-bytes", 32 * 2**20))

    def put(self, key: str, url: str, nbytes: int, values: list) -> None:
        budget = self.budget()
        with self._lock:
            self._pop((key, url))
            self._entries[(key, url)] = (nbytes, values)
            self._bytes += nbytes
            while self._bytes > budget and self._entries:
                self._pop(next(iter(self._entries)))

    def get(self, key: str, url: str) -> list | None:
        with self._lock:
            entry = self._entries.get((key, url))
            if entry is None:
                return None
            self._entries.move_to_end((key, url))
            return entry[1]

    def drop(self, key: str) -> None:
        with self._lock:
            for entry in [k for k in self._entries if k[0] == key]:
                self._pop(entry)

    def _pop(self, entry: tuple[str, str]) -> None:
        found = self._entries.pop(entry, None)
        if found is not None:
            self._bytes -= found[0]


PARSED = ParsedCache()


def index_file(
    url: str,
    granularity: int,
    storage_options: dict | None = None,
    *,
    block_size: int = BLOCK_SIZE,
    cache_key: str | None = None,
) -> FileIndex:
    """Count the JSON values of a delimited file and sample where they start (runs on a worker).

    Streams the file in ``block_size`` reads; bad JSON counts as one value per bad stretch.
    With ``cache_key``, the parsed values of a file small enough for the worker's
    :data:`PARSED` cache are kept there for :func:`take_cached`.

    >>> index_file("data/part-0.jsonl", granularity=2)  # doctest: +SKIP
    FileIndex(url='data/part-0.jsonl', count=3, offsets=(0, 24), granularity=2, size=36, ...)
    """
    if granularity < 1:
        raise ValueError(f"granularity must be >= 1, got {granularity}")
    offsets: list[int] = []
    lines: list[int] = []
    count = 0
    keep = PARSED.budget() // 2 if cache_key is not None else 0
    values: list | None = [] if keep else None
    try:
        fs, path = url_to_fs(url, **(storage_options or {}))
        cur = Cursor(BlockReader(fs, path).read, byte=0, line=1, block=block_size)
        while (found := next_value(cur)) is not None:
            if count % granularity == 0:
                byte, line = cur.locate(found[0])
                offsets.append(byte)
                lines.append(line)
                if byte > keep:
                    values = None  # too big to keep: its batches read their ranges
            if values is not None:
                bad = found[2]
                values.append(found[1] if bad is None else _Bad(*bad_position(cur, found, True)))
            count += 1
        size = cur.bytes_seen
    except Exception as exc:
        raise SourceError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    if values is not None and size <= keep:
        PARSED.put(cache_key, url, size, values)
    logger.debug("indexed %s: %d values, %d bytes", url, count, size)
    return FileIndex(url, count, tuple(offsets), granularity, size, tuple(lines))


def take_cached(
    key: str, url: str, first_value: int, takes: Sequence[int]
) -> list[list | BaseException] | None:
    """Runs of values from the :data:`PARSED` cache, as :func:`read_segments` gives them from
    storage; None when the file is not cached here."""
    values = PARSED.get(key, url)
    if values is None:
        return None
    results: list[list | BaseException] = []
    position = first_value
    for take in takes:
        run = values[position : position + take]
        position += take
        if len(run) < take:
            return None  # not what the index promised: read from storage, which reports it
        bad = next((v for v in run if isinstance(v, _Bad)), None)
        results.append(
            run if bad is None else InvalidJSONError(url, bad.line, bad.byte, bad.reason)
        )
    return results


def read_segments(
    url: str,
    start: int,
    end: int | None,
    skip: int,
    takes: Sequence[int],
    *,
    start_line: int = 0,
    storage_options: dict | None = None,
) -> list[list | BaseException]:
    """Parse consecutive runs of values from one byte range of a delimited file.

    Reads ``[start, end)`` (``end=None``: to the end of the file) with one request, skips
    ``skip`` values, then takes ``takes[0]`` values, then ``takes[1]``... Returns, per take,
    the list of values or the exception that spoils it: an :class:`InvalidJSONError` for a
    bad stretch among its values, a :class:`SourceError` if the range cannot be read or holds
    fewer values than the index promised. ``start_line`` is the line at ``start`` (0: unknown).
    """
    try:
        data = read_range(url, start, end, storage_options)
    except Exception as exc:
        span = f"{start}-{'EOF' if end is None else end}"
        error = SourceError(f"cannot read {url} bytes {span}: {type(exc).__name__}: {exc}")
        return [error] * len(takes)
    chunks = [data]
    cur = Cursor(lambda _n: chunks.pop() if chunks else b"", start, start_line, len(data))
    return _take_runs(cur, url, skip, takes, start_line > 0)


def _take_runs(cur: Cursor, url: str, skip: int, takes: Sequence[int], lines_known: bool):
    for seen in range(skip):
        if next_value(cur) is None:
            return [missing_error(url, cur, skip + sum(takes) - seen)] * len(takes)
    results: list[list | BaseException] = []
    for take in takes:
        values: list = []
        error: BaseException | None = None
        for _ in range(take):
            found = next_value(cur)
            if found is None:
                error = error or missing_error(url, cur, take - len(values))
                break
            if found[2] is None:
                values.append(found[1])
            elif error is None:
                byte, line, reason = bad_position(cur, found, lines_known)
                error = InvalidJSONError(url, line if lines_known else None, byte, reason)
        results.append(values if error is None else error)
    return results
