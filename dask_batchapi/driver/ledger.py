"""The job's durable memory: which batches are final, the dead letter, and the logs.

A driver buffers changes and flushes them as new numbered segments (``r<run>-<seq>``), so a
checkpoint costs O(changes since the last one) and a resumed driver (a new run) never overwrites
an older segment. The order of a flush is dead letter, then ledger, then logs, then state: a
batch marked dead in the ledger always has its dead-letter record.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from dask_batchapi.sources.batches import BatchRef, Segment
from dask_batchapi.status import JobState
from dask_batchapi.store.jobstore import JobStore

logger = logging.getLogger(__name__)


@dataclass
class FinalBatches:
    """Batch indices already final in the store (a resumed driver skips them)."""

    succeeded: set[int] = field(default_factory=set)
    dead_lettered: set[int] = field(default_factory=set)
    items_succeeded: int = 0  # items of the final batches (poison item isolation counts them)
    items_dead_lettered: int = 0

    def __contains__(self, index: int) -> bool:
        return index in self.succeeded or index in self.dead_lettered


class Checkpointer:
    """Buffers a driver's changes and writes them to the store in segments."""

    def __init__(self, store: JobStore, api_name: str, job_id: str, run: int):
        self.store, self.api_name, self.job_id, self.run = store, api_name, job_id, run
        self._seq = 0
        self.succeeded: list[int] = []
        self.dead_lettered: list[int] = []
        self.dead_records: list[dict] = []
        self.logs: list[str] = []
        self.items_succeeded = 0  # items of the batches in ``succeeded`` / ``dead_lettered``
        self.items_dead_lettered = 0

    def _segment(self, ext: str) -> str:
        return f"r{self.run:03d}-{self._seq:06d}.{ext}"

    def flush(self, state: JobState) -> None:
        """Write everything buffered, then the state (which carries the heartbeat)."""
        self._seq += 1
        args = (self.store, self.api_name, self.job_id)
        if self.dead_records:
            _append(*args, "dead_letter", self._segment("json"), self.dead_records)
        if self.succeeded or self.dead_lettered:
            ledger = {"succeeded": self.succeeded, "dead_lettered": self.dead_lettered}
            ledger["items"] = [self.items_succeeded, self.items_dead_lettered]
            _append(*args, "ledger", self._segment("json"), ledger)
        if self.logs:
            _append(*args, "logs", self._segment("jsonl"), self.logs)
        self.succeeded, self.dead_lettered, self.dead_records, self.logs = [], [], [], []
        self.items_succeeded = self.items_dead_lettered = 0
        self.store.write_state(self.api_name, self.job_id, state.to_dict())


def _append(store: JobStore, api: str, job_id: str, kind: str, name: str, data) -> None:
    store.append_segment(api, job_id, kind, name, data)


def load_final(store: JobStore, api_name: str, job_id: str) -> FinalBatches:
    final = FinalBatches()
    for segment in store.iter_segments(api_name, job_id, "ledger"):
        final.succeeded.update(segment.get("succeeded", ()))
        final.dead_lettered.update(segment.get("dead_lettered", ()))
        ok, dead = segment.get("items", (0, 0))
        final.items_succeeded += ok
        final.items_dead_lettered += dead
    return final


def read_dead_letter(store: JobStore, api_name: str, job_id: str) -> list[dict]:
    """Every dead-letter record of the job, in batch order (then item order: one record per
    item of a batch whose items were isolated)."""
    records = [r for seg in store.iter_segments(api_name, job_id, "dead_letter") for r in seg]
    # a batch (or item) dead-lettered twice (a resumed run redid it) keeps its last record
    latest = {(r["index"], r.get("item_index", -1)): r for r in records}
    return [latest[k] for k in sorted(latest)]


def read_logs(
    store: JobStore, api_name: str, job_id: str, after: str | None = None
) -> tuple[list[str], str | None]:
    """Log lines in segments after ``after``, and the last segment read (for --follow)."""
    lines: list[str] = []
    last = after
    for name in store.segments(api_name, job_id, "logs", after=after):
        lines.extend(store.read_segment(api_name, job_id, "logs", name))
        last = name
    return lines, last


def ref_to_dict(ref: BatchRef) -> dict:
    """A batch reference as JSON, so a dead-lettered batch can be run again (``retry``)."""
    return asdict(ref)


def ref_from_dict(data: dict, index: int) -> BatchRef:
    """The reference stored by :func:`ref_to_dict`, renumbered as batch ``index`` (a sub-batch
    of an isolated batch becomes a batch of its own; it keeps its items' input indexes)."""
    files = data.get("files")
    segments = data.get("segments")
    return BatchRef(
        index=index,
        items=data.get("items"),
        files=tuple(files) if files is not None else None,
        segments=tuple(Segment(**s) for s in segments) if segments is not None else None,
        first_item=data.get("first_item"),
    )
