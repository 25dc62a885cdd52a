"""What the driver and the workers say to each other: typed, picklable, at the bottom floor.

The driver sends a *chunk* — a list of batch references, pickled once by :func:`pack_chunk` so
the scheduler handles one ``bytes`` object and never the items — to a task that runs it on the
job's worker plugin. The task answers a :class:`ChunkResult`: one :class:`BatchOutcome` per batch
that ran, the batches it did not start (the job was cancelled), the job's log lines, and the
:class:`BatchError` of ``Handler.__init__`` if the handler could not be built. ``on_job_complete``
answers a :class:`CompletionResult`.

>>> outcome = BatchOutcome(3, ok=False, seconds=0.1, error=BatchError("ValueError", "bad"))
>>> outcome.error.line
'ValueError: bad'
>>> batch_id_for("00000000000000ff", 3)
'00000000000000ff-000003'
"""

from __future__ import annotations

import os
import pickle
import traceback
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BatchError",
    "BatchOutcome",
    "ChunkResult",
    "CompletionResult",
    "batch_id_for",
    "pack_chunk",
    "plugin_name",
    "unpack_chunk",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def plugin_name(job_id: str) -> str:
    """The name of a job's worker plugin (and of the key prefix of its tasks)."""
    return f"batchapi-{job_id}"


def batch_id_for(job_id: str, index: int) -> str:
    """The unique, stable id of batch ``index`` of a job (sortable within the job)."""
    return f"{job_id}-{index:06d}"


def pack_chunk(refs: list) -> bytes:
    """A chunk of batch references as one bytes argument (see the module docstring)."""
    return pickle.dumps(refs, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_chunk(packed: bytes) -> list:
    """The batch references of :func:`pack_chunk` (only ever our driver's bytes)."""
    return pickle.loads(packed)  # noqa: S301 - pickled by this job's driver


@dataclass(frozen=True)
class BatchError:
    """Why a batch (or a handler hook) failed: exception type name, message, traceback."""

    kind: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> BatchError:
        """The error of ``exc``. The traceback starts at the first frame of the user's code:
        the package's own frames above it (the chunk loop, the project context) say nothing
        about the failure. An error raised in the package itself keeps all its frames."""
        tb = first = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            tb = tb.tb_next
        frames = tb if tb is not None else first
        text = "".join(traceback.format_exception(type(exc), exc, frames))
        return cls(type(exc).__name__, str(exc), text)

    @property
    def line(self) -> str:
        """``Kind: message``, as dead-letter records and log lines show it."""
        return f"{self.kind}: {self.message}"

    def status_error(self, reason: str) -> dict:
        """The job's ``error`` in the status document when ``reason`` raised this error."""
        message = f"{reason} raised {self.kind}: {self.message}"
        return {"type": self.kind, "message": message, "reason": reason}


@dataclass(frozen=True)
class BatchOutcome:
    """One batch's run on a worker."""

    index: int
    ok: bool
    seconds: float
    error: BatchError | None = None


@dataclass(frozen=True)
class ChunkResult:
    """What a chunk task returns to the driver."""

    worker: str
    pid: int
    outcomes: tuple[BatchOutcome, ...] = ()
    not_run: tuple[int, ...] = ()  # batches the task did not start (the job was cancelled)
    logs: tuple[str, ...] = ()
    init_error: BatchError | None = None  # Handler.__init__ failed: nothing ran
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. custom metrics


@dataclass(frozen=True)
class CompletionResult:
    """What the ``on_job_complete`` task returns to the driver."""

    worker: str
    ran: bool = False
    error: BatchError | None = None
    logs: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
