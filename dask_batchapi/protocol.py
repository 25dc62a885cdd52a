"""What the driver and the workers say to each other: typed, picklable, at the bottom floor.

The driver ships a :class:`JobContext` inside the job's worker plugin, then sends *chunks* — a
list of batch references, pickled once by :func:`pack_chunk` so that the scheduler handles one
``bytes`` object and never the items — to a task that runs them on the plugin. The task answers
a :class:`ChunkResult`: one :class:`BatchOutcome` per batch that ran, the batches it did not start
(the job was cancelled), the job's log lines and metrics, and the :class:`BatchError` of
``Handler.__init__`` if the handler could not be built. ``on_job_complete`` answers a
:class:`CompletionResult`.

:class:`BatchError` and :class:`BatchOutcome` are named tuples: ``kind, message, tb = error``
reads them, and they pickle small.

>>> outcome = BatchOutcome(3, ok=False, seconds=0.1, error=BatchError("ValueError", "bad"))
>>> outcome.error.line
'ValueError: bad'
>>> batch_id_for("00000000000000ff", 3), batch_id_for("00000000000000ff", 3, "01")
('00000000000000ff-000003', '00000000000000ff-000003.01')
"""

from __future__ import annotations

import os
import pickle
import traceback
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "INIT_EVENT",
    "TIMEOUT_EVENT",
    "BatchError",
    "BatchOutcome",
    "ChunkResult",
    "CompletionResult",
    "JobContext",
    "batch_id_for",
    "pack_chunk",
    "plugin_name",
    "unpack_chunk",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# Worker events (``Worker.log_event``) the driver reads from the scheduler:
TIMEOUT_EVENT = "batchapi-batch-timeout"  # a batch stuck past its timeout: its worker restarts
INIT_EVENT = "batchapi-handler-built"  # building the Handler ended (ok or not) on a worker


def plugin_name(job_id: str) -> str:
    """The name of a job's worker plugin."""
    return f"batchapi-{job_id}"


def batch_id_for(job_id: str, index: int, path: str = "") -> str:
    """The unique, stable id of batch ``index`` of a job (``.path``: one of its sub-batches,
    poison-item isolation)."""
    return f"{job_id}-{index:06d}.{path}" if path else f"{job_id}-{index:06d}"


def pack_chunk(refs: list) -> bytes:
    """A chunk of batch references as one bytes argument (see the module docstring)."""
    return pickle.dumps(refs, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_chunk(packed: bytes) -> list:
    """The batch references of :func:`pack_chunk` (only ever our own driver's bytes)."""
    return pickle.loads(packed)  # noqa: S301 - pickled by this job's driver


class BatchError(NamedTuple):
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


class BatchOutcome(NamedTuple):
    """One batch's run on a worker (``key``: its index, or ``"index.path"`` for a sub-batch)."""

    key: int | str
    ok: bool
    seconds: float
    error: BatchError | None = None


@dataclass
class JobContext:
    """What a worker needs to know about its job (shipped inside the job's plugin)."""

    job_id: str
    api_name: str
    handler_path: str
    python_path: str | None
    signature: dict  # spec.project.HandlerSignature.to_dict()
    config: dict  # spec config deep-merged with the job's config
    job_spec: dict
    env: dict = field(default_factory=dict)  # handler.env from the spec
    log_level: str = "info"
    output: str | None = None
    storage_options: dict = field(default_factory=dict)
    batch_timeout: float | None = None
    batch_timeout_grace: float = 5.0
    dependencies: dict = field(default_factory=dict)  # handler.dependencies: {kind: file}
    id_key: str | None = None  # item_list.id_key / delimited_files.id_key: outputs carry ids
    origin: dict = field(default_factory=dict)  # store, cluster, runner: see worker/scope.py


@dataclass
class ChunkResult:
    """What a chunk task returns to the driver."""

    worker: str
    pid: int
    outcomes: list[BatchOutcome] = field(default_factory=list)
    not_run: list[int | str] = field(default_factory=list)  # not started: the job was cancelled
    logs: list[str] = field(default_factory=list)
    init_error: BatchError | None = None  # Handler.__init__ failed: nothing ran
    failed_items: dict = field(default_factory=dict)  # key -> the one item of a failed batch
    metrics: list = field(default_factory=list)  # the handler's metrics_client, drained
    triggered: list[dict] = field(default_factory=list)  # jobs handler code submitted
    foreign: bool = False  # it landed on a worker not leased to the job: nothing ran


@dataclass
class CompletionResult:
    """What the ``on_job_complete`` task returns to the driver."""

    worker: str
    ran: bool = False
    error: BatchError | None = None
    logs: list[str] = field(default_factory=list)
    metrics: list = field(default_factory=list)
    triggered: list[dict] = field(default_factory=list)
