"""``print()`` inside handler code as log lines of the job (see :func:`capture_output`)."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dask_batchapi.logging import MAX_LINE_BYTES, logger

_capture = threading.local()  # .writers: {"stdout": _LineWriter, ...}; .emitting: bool


@contextmanager
def capture_output() -> Iterator[None]:
    """Turn this thread's writes to ``sys.stdout`` / ``sys.stderr`` into log lines.

    Each complete line becomes an INFO (stdout) or ERROR (stderr) record of ``logger`` in the
    current :func:`log_context`; a partial last line is logged on exit. Other threads' writes
    still reach the real streams. Use it inside ``log_context`` so the last line has its context.

    Examples
    --------
    >>> with log_context(job_id="j1"), capture_output():
    ...     print("processed 8 items")  # a log line of job j1
    """
    if getattr(_capture, "writers", None):  # already capturing in this thread
        yield
        return
    writers = {"stdout": _LineWriter(logging.INFO), "stderr": _LineWriter(logging.ERROR)}
    _routers.acquire()
    _capture.writers = writers
    try:
        yield
    finally:
        for writer in writers.values():
            writer.close()
        _capture.writers = None
        _routers.release()


class _LineWriter:
    """Cuts one thread's writes to one stream into lines and logs each."""

    def __init__(self, level: int) -> None:
        self._level = level
        self._chunks: list[str] = []
        self._size = 0

    def write(self, text: str) -> None:
        self._chunks.append(text)
        self._size += len(text)
        if "\n" in text:
            *lines, rest = "".join(self._chunks).split("\n")
            self._chunks, self._size = [rest], len(rest)
            for line in lines:
                _log_captured(self._level, line)
        if self._size > MAX_LINE_BYTES:  # it would be dropped anyway; keep memory bounded
            self.close()

    def close(self) -> None:
        line = "".join(self._chunks)
        self._chunks, self._size = [], 0
        _log_captured(self._level, line)


def _log_captured(level: int, line: str) -> None:
    line = line.rstrip("\r")
    if not line:
        return
    # While logging, this thread's writes (a handler's error report) go to the real streams.
    _capture.emitting = True
    try:
        logger.log(level, line)
    finally:
        _capture.emitting = False


class _StreamRouter:
    """Stands in for ``sys.stdout`` / ``sys.stderr`` while some thread captures its output."""

    routes_captured_output = True  # the marker dask_batchapi.logging unwraps

    def __init__(self, name: str, original: Any) -> None:
        self._name = name
        self.original = original

    def write(self, text: str) -> int:
        writers = getattr(_capture, "writers", None)
        if writers and not getattr(_capture, "emitting", False):
            writers[self._name].write(text)
            return len(text)
        return len(text) if self.original is None else self.original.write(text)

    def writelines(self, lines: Iterator[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.original is not None:
            self.original.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, buffer, ...
        return getattr(self.original, name)


class _Routers:
    """Puts the routers in place while at least one thread captures, and takes them out after."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                for name in ("stdout", "stderr"):
                    if not isinstance(getattr(sys, name), _StreamRouter):
                        setattr(sys, name, _StreamRouter(name, getattr(sys, name)))
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for name in ("stdout", "stderr"):
                    stream = getattr(sys, name)
                    # Someone may have swapped the stream since; then leave theirs alone.
                    if isinstance(stream, _StreamRouter):
                        setattr(sys, name, stream.original)


_routers = _Routers()
