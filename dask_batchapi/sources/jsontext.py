"""The JSON stream reader under delimited files: decoded text over a byte stream, one value at
a time, with the byte offset and line of every value (see :mod:`dask_batchapi.sources.delimited`
for the format and the invalid-JSON policy)."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable

from fsspec.core import url_to_fs

from dask_batchapi.errors import SourceError

BLOCK_SIZE = 4 * 2**20
# A value that ends less than this many characters before the end of the buffered text might
# still grow once more bytes arrive: "1" becomes "1.5", "1e" becomes "1e+7".
_MARGIN = 8
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_BOM = "\ufeff"
_BOM_BYTES = 3


class InvalidJSONError(SourceError, ValueError):
    """A delimited file holds something that is not JSON at ``line`` / ``byte``."""

    def __init__(self, url: str, line: int | None, byte: int, reason: str):
        where = f"line {line} (byte {byte})" if line else f"byte {byte}"
        super().__init__(f"{url}: invalid JSON at {where}: {reason}")
        self.url, self.line, self.byte, self.reason = url, line, byte, reason

    def __reduce__(self):
        # Batches fail on workers and the error travels back pickled.
        return type(self), (self.url, self.line, self.byte, self.reason)


class Cursor:
    """Decoded text over a byte stream, with the byte offset and line of any position.

    ``text[pos:]`` is what has not been consumed yet. ``more()`` drops the consumed text and
    appends the next read. Positions are located incrementally from a mark, so locating
    every value of a file costs O(file), whatever its encoding.
    """

    __slots__ = (
        "text",
        "pos",
        "eof",
        "_read",
        "_block",
        "_want",
        "_decoder",
        "_mark",
        "_byte",
        "_line",
        "_at_start",
    )

    def __init__(self, read: Callable[[int], bytes], byte: int, line: int, block: int):
        self.text, self.pos, self.eof = "", 0, False
        self._read, self._block, self._want = read, block, block
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._mark, self._byte, self._line = 0, byte, line
        self._at_start = byte == 0

    def locate(self, p: int) -> tuple[int, int]:
        """(byte offset, line) of ``text[p]``; ``p`` never goes backwards."""
        mark, text = self._mark, self.text
        if p > mark:
            self._line += text.count("\n", mark, p)
            if text.isascii():
                self._byte += p - mark
            else:
                self._byte += len(text[mark:p].encode("utf-8", "surrogateescape"))
            self._mark = p
        return self._byte, self._line

    def more(self) -> None:
        """Drop the consumed text and read the next block (sets ``eof`` at the end)."""
        self.locate(self.pos)
        # Re-parsing a value that spans many blocks is quadratic unless reads grow.
        stalled = self.pos == 0 and bool(self.text)
        self._want = self._want * 2 if stalled else self._block
        self.text, self.pos, self._mark = self.text[self.pos :], 0, 0
        chunk = self._read(self._want)
        new = self._decoder.decode(chunk, final=not chunk)
        self.eof = not chunk
        if self._at_start and new:
            self._at_start = False
            if new.startswith(_BOM):
                new, self._byte = new[1:], self._byte + _BOM_BYTES
        self.text += new

    @property
    def bytes_seen(self) -> int:
        self.locate(len(self.text))
        return self._byte


def next_value(cur: Cursor) -> tuple[int, object, tuple[int, str] | None] | None:
    """Parse the next value: ``(start, value, None)``, ``(start, None, (pos, reason))`` for a
    bad stretch (see the module docstring), or None at the end. Advances ``cur.pos``."""
    while True:
        text = cur.text
        start = _WHITESPACE.match(text, cur.pos).end()
        if start == len(text):
            cur.pos = start
            if cur.eof:
                return None
            cur.more()
            continue
        try:
            value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            bad = (exc.pos, exc.msg)
        except (ValueError, RecursionError) as exc:  # too many digits, too deeply nested
            bad = (start, str(exc) or type(exc).__name__)
        else:
            if len(text) - end < _MARGIN and not cur.eof:
                cur.more()
                continue
            cur.pos = end
            return start, value, None
        newline = text.find("\n", bad[0])
        if newline < 0 and not cur.eof:
            cur.more()  # the error may be a value cut off by the end of the read
            continue
        cur.pos = len(text) if newline < 0 else newline + 1
        return start, None, bad


class BlockReader:
    """Reads a file front to back with ranged reads: one GET per block on object stores,
    where opening a file costs an extra request for its size."""

    def __init__(self, fs, path: str):
        self.fs, self.path, self.pos, self.done = fs, path, 0, False

    def read(self, n: int) -> bytes:
        if self.done:
            return b""
        try:
            data = self.fs.cat_file(self.path, start=self.pos, end=self.pos + n)
        except OSError:
            # S3 refuses a range that starts at the end of the object (or of an empty one)
            if self.fs.size(self.path) != self.pos:
                raise
            data = b""
        self.pos += len(data)
        self.done = len(data) < n
        return data


def read_range(url: str, start: int, end: int | None, storage_options: dict | None) -> bytes:
    fs, path = url_to_fs(url, **(storage_options or {}))
    # Keywords matter: s3fs's cat_file takes version_id second. An integer start keeps s3fs
    # from asking for the object's size first (ranges here never start in an empty object).
    return fs.cat_file(path, start=start, end=end)


def bad_position(cur: Cursor, found: tuple, lines_known: bool) -> tuple[int, int, str]:
    """(byte, line, reason) of a bad stretch: where its value starts, since that is where the
    user must look; the reason adds where the parser gave up if that is on a later line."""
    start, _, (stop, reason) = found
    byte, line = cur.locate(start)
    stop_byte, stop_line = cur.locate(stop)
    if stop_line != line:
        at = f"line {stop_line}, byte {stop_byte}" if lines_known else f"byte {stop_byte}"
        reason = f"{reason} (parser stopped at {at})"
    return byte, line, reason


def missing_error(url: str, cur: Cursor, missing: int) -> SourceError:
    return SourceError(
        f"{url}: {missing} JSON value(s) missing before byte {cur.bytes_seen}; the file "
        "changed after the job indexed it, resubmit the job"
    )
