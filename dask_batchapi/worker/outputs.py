"""Exactly-once outputs: one deterministic object per batch, committed atomically.

Layout: ``<output>/<job_id>/part-<batch index, 6+ digits>.jsonl``, one JSON value per line; a
returned list is written one line per element, any other value as one line. A part that already
exists was committed by an earlier attempt (a retry, a lost worker's rerun, a resumed job) and
is left as it is, so reruns never duplicate and readers never see a partial part.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import fsspec

from dask_batchapi.errors import OutputError
from dask_batchapi.fsutil import atomic_write
from dask_batchapi.spec.limits import json_problem

logger = logging.getLogger(__name__)


def part_name(index: int) -> str:
    return f"part-{index:06d}.jsonl"


def part_url(output: str, job_id: str, index: int) -> str:
    return f"{output.rstrip('/')}/{job_id}/{part_name(index)}"


def encode_result(result: Any) -> bytes:
    """The JSON-lines bytes of a handler's return value: strict JSON, never a repr.

    A value JSON cannot hold (a generator, an object, a set, NaN or Infinity) raises
    :class:`~dask_batchapi.errors.OutputError`, which fails the batch (into the dead letter).
    """
    values = result if isinstance(result, list) else [result]
    problem = json_problem(result, "the return value")
    if problem:
        raise OutputError(f"handle_batch's output cannot be written as JSON: {problem}")
    return "".join(json.dumps(v, allow_nan=False) + "\n" for v in values).encode()


class OutputWriter:
    """Writes the parts of one job under ``<output>/<job_id>/``."""

    def __init__(self, output: str, job_id: str, storage_options: dict | None = None):
        self.fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
        self.dir = f"{root.rstrip('/')}/{job_id}"

    def commit(self, index: int, result: Any) -> bool:
        """Write the part of batch ``index``; False if it was already committed."""
        path = f"{self.dir}/{part_name(index)}"
        if self.fs.exists(path):
            return False
        atomic_write(self.fs, path, encode_result(result))
        return True
