"""Exactly-once outputs: one deterministic object per batch, committed atomically.

Layout: ``<output>/<job_id>/part-<batch index, 6+ digits>.jsonl``, one JSON value per line; a
returned list is written one line per element, any other value as one line. A part that already
exists was committed by an earlier attempt (a retry, a lost worker's rerun, a resumed job) and
is left as it is, so reruns never duplicate and readers never see a partial part.

Poison item isolation: a batch that failed is never written; the sub-batches it is split into
that succeed each commit their own part, ``part-<index>.<path>.jsonl``, where ``path`` is the
sub-batch's halves as ``0``/``1`` characters. The sub-batches that succeed are disjoint, and for
disjoint paths the lexical order is the item order, so reading ``part-*.jsonl`` in sorted name
order yields every output once, in input order.

Item ids (``id_key``): when the returned value is a list with one element per item, each line is
``{"id": <item id>, "output": <element>}``; any other value is written as
``{"ids": [<item ids of the batch>], "output": <value>}`` (one line per element of a list).
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


def part_name(index: int, path: str = "") -> str:
    return f"part-{index:06d}.{path}.jsonl" if path else f"part-{index:06d}.jsonl"


def part_url(output: str, job_id: str, index: int, path: str = "") -> str:
    return f"{output.rstrip('/')}/{job_id}/{part_name(index, path)}"


def encode_result(result: Any, ids: list | None = None) -> bytes:
    """The JSON-lines bytes of a handler's return value: strict JSON, never a repr
    (``ids``: its items' ids, written beside the outputs).

    A value JSON cannot hold (a generator, an object, a set, NaN or Infinity) raises
    :class:`~dask_batchapi.errors.OutputError`, which fails the batch (into the dead letter).

    >>> encode_result([1, 2], ids=["a", "b"])
    b'{"id": "a", "output": 1}\\n{"id": "b", "output": 2}\\n'
    """
    values = result if isinstance(result, list) else [result]
    problem = json_problem(result, "the return value")
    if problem:
        raise OutputError(f"handle_batch's output cannot be written as JSON: {problem}")
    if ids is not None:
        if isinstance(result, list) and len(result) == len(ids):
            values = [{"id": i, "output": v} for i, v in zip(ids, values, strict=True)]
        else:
            values = [{"ids": ids, "output": v} for v in values]
    return "".join(json.dumps(v, allow_nan=False) + "\n" for v in values).encode()


class OutputWriter:
    """Writes the parts of one job under ``<output>/<job_id>/``."""

    def __init__(self, output: str, job_id: str, storage_options: dict | None = None):
        self.fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
        self.dir = f"{root.rstrip('/')}/{job_id}"

    def commit(self, index: int, result: Any, path: str = "", ids: list | None = None) -> bool:
        """Write the part of batch ``index`` (``path``: of one of its sub-batches); False if it
        was already committed."""
        target = f"{self.dir}/{part_name(index, path)}"
        if self.fs.exists(target):
            return False
        atomic_write(self.fs, target, encode_result(result, ids))
        return True
