"""Job statuses and their legal transitions, the job state, and the status document."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum


class JobStatus(str, Enum):
    """The status of a job; the values are the strings persisted in the store (Cortex v0.35+)."""

    PENDING = "pending"  # record written, driver not started yet
    ENQUEUING = "enqueuing"  # driver up, building the cluster / listing the input
    RUNNING = "running"  # batches are being processed
    SUCCEEDED = "succeeded"  # every batch succeeded and on_job_complete ran
    COMPLETED_WITH_FAILURES = "completed_with_failures"  # done, some batches in the dead letter
    ENQUEUE_FAILED = "enqueue_failed"  # the input could not be listed or split
    WORKER_ERROR = "worker_error"  # Handler.__init__ or on_job_complete raised, or workers lost
    WORKER_OOM = "worker_oom"  # workers kept dying from their memory limit
    TIMED_OUT = "timed_out"  # the job's timeout ran out
    STOPPED = "stopped"  # a user stopped it
    UNEXPECTED_ERROR = "unexpected_error"  # a bug or an infrastructure failure of the driver

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change (except by ``resume``)."""
        return self not in _ACTIVE

    @property
    def is_success(self) -> bool:
        return self is JobStatus.SUCCEEDED


_ACTIVE = frozenset({JobStatus.PENDING, JobStatus.ENQUEUING, JobStatus.RUNNING})
_FINAL_FROM_ACTIVE = frozenset(JobStatus) - _ACTIVE

#: Every legal transition. ``resume`` reopens an interrupted job (its driver died while
#: enqueuing or running) or any non-successful final status as ``pending``.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.ENQUEUING}) | _FINAL_FROM_ACTIVE,
    JobStatus.ENQUEUING: frozenset({JobStatus.RUNNING, JobStatus.PENDING}) | _FINAL_FROM_ACTIVE,
    JobStatus.RUNNING: frozenset({JobStatus.PENDING}) | _FINAL_FROM_ACTIVE,
    **{
        s: frozenset({JobStatus.PENDING})
        for s in _FINAL_FROM_ACTIVE
        if s not in (JobStatus.SUCCEEDED,)
    },
    JobStatus.SUCCEEDED: frozenset(),
}


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    """Whether a job may move from ``old`` to ``new``."""
    return new in TRANSITIONS[old]


# -- the state a driver checkpoints, and the status document readers see ------------------------


def utcnow_iso(ts: float | None = None) -> str:
    """An ISO-8601 UTC timestamp (``2026-11-27T03:10:17.123456Z``)."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str | None) -> float | None:
    if not value:
        return None
    return (
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    )


@dataclass
class JobState:
    """The mutable part of a job, rewritten by its driver at every checkpoint (small, O(1))."""

    status: str = JobStatus.PENDING.value
    run: int = 0  # 1 for the first driver, +1 per resume
    start_time: str | None = None
    end_time: str | None = None
    total_batch_count: int | None = None
    succeeded: int = 0
    failed: int = 0  # failed handler attempts (Cortex's batch_metrics.failed)
    dead_lettered: int = 0  # batches that ended in the dead letter
    lost: int = 0  # batch runs lost with their worker (not handler failures)
    batch_seconds: float = 0.0  # summed handler time of finished attempts
    attempts_timed: int = 0
    in_flight: int = 0
    workers_running: int = 0  # workers the job holds (leased to it) right now
    queue_position: int | None = None  # waiting for a first worker: 1 = next (our extension)
    error: dict | None = None  # {"type", "message", "reason"}
    heartbeat: float | None = None
    driver: dict = field(default_factory=dict)  # host, pid
    dashboard_link: str | None = None
    custom_metrics: list = field(default_factory=list)  # the handler's metrics_client, aggregated
    items_succeeded: int = 0  # items of succeeded batches and sub-batches
    items_dead_lettered: int = 0  # items in the dead letter (all items of a dead whole batch)
    not_attempted: dict | None = None  # set when the error budget ended the job early
    versions: list = field(default_factory=list)  # API versions run, when resume --force mixed them
    triggered: list = field(default_factory=list)  # jobs its handler code submitted

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> JobState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    def move_to(self, new: JobStatus) -> None:
        """Change the status; an illegal transition is a bug and raises ValueError."""
        old = self.job_status
        if new is not old and not can_transition(old, new):
            raise ValueError(f"illegal job status transition {old.value} -> {new.value}")
        self.status = new.value


_RECORD_HIDDEN = ("submission", "retry_refs")


def is_interrupted(
    record: dict, state: JobState, now: float, heartbeat_timeout: float, start_timeout: float = 0.0
) -> bool:
    """True when the job looks active but its driver stopped beating (died)."""
    if state.job_status.is_terminal:
        return False
    last = state.heartbeat or parse_iso(record.get("created_time")) or now
    # a runner needs a few seconds to start before its first heartbeat; a driver pod (a
    # Kubernetes job, also when resumed: pending again) may need minutes to be scheduled
    if not state.heartbeat:
        grace = max(3 * heartbeat_timeout, start_timeout)
    elif start_timeout and state.job_status is JobStatus.PENDING:
        grace = start_timeout
    else:
        grace = heartbeat_timeout
    return now - last > grace


def status_document(
    record: dict,
    state: JobState,
    api_spec: dict,
    *,
    now: float,
    heartbeat_timeout: float,
    driver_dead: bool = False,
    start_timeout: float = 0.0,
) -> dict:
    """Cortex's status document: ``{"job_status": {...}, "api_spec": {...}}`` (extended)."""
    attempts = state.attempts_timed
    interrupted = is_interrupted(record, state, now, heartbeat_timeout, start_timeout) or (
        driver_dead and not state.job_status.is_terminal
    )
    job = {k: v for k, v in record.items() if k not in _RECORD_HIDDEN}
    job.update(
        status=state.status,
        start_time=state.start_time,
        end_time=state.end_time,
        total_batch_count=state.total_batch_count,
        batches_in_queue=_in_queue(state),
        batch_metrics={
            "succeeded": state.succeeded,
            "failed": state.failed,
            "average_time_per_batch": (state.batch_seconds / attempts) if attempts else None,
            "dead_lettered": state.dead_lettered,
            "lost": state.lost,
        },
        items_dead_lettered=state.items_dead_lettered,
        item_metrics=_item_metrics(record, state),
        not_attempted=state.not_attempted,
        versions=state.versions or None,
        mixed_versions=len(state.versions) > 1,
        worker_counts=_worker_counts(state),
        custom_metrics=state.custom_metrics,
        queue_position=state.queue_position if not state.job_status.is_terminal else None,
        error=state.error,
        dashboard_link=state.dashboard_link,
        triggered=list(state.triggered),
        heartbeat=utcnow_iso(state.heartbeat) if state.heartbeat else None,
        run=state.run,
        interrupted=interrupted,
        resume_command=(
            f"dask-batchapi resume {record['api_name']} {record['job_id']}" if interrupted else None
        ),
    )
    return {"job_status": job, "api_spec": api_spec}


def _item_metrics(record: dict, state: JobState) -> dict:
    """Per-item outcomes: succeeded, dead-lettered, and not attempted (known once the job has
    ended early on its error budget, or when it ends with every item final: 0)."""
    ended = (JobStatus.SUCCEEDED, JobStatus.COMPLETED_WITH_FAILURES)
    if state.not_attempted is not None:
        not_attempted = state.not_attempted.get("items")
    else:  # every item of a job that ran to its end is final
        not_attempted = 0 if state.job_status in ended else None
    return {
        "succeeded": state.items_succeeded,
        "dead_lettered": state.items_dead_lettered,
        "not_attempted": not_attempted,
    }


def _in_queue(state: JobState) -> int | None:
    if state.total_batch_count is None:
        return None
    done = state.succeeded + state.dead_lettered
    return max(0, state.total_batch_count - done - state.in_flight)


def _worker_counts(state: JobState) -> dict:
    active = not state.job_status.is_terminal
    return {
        "pending": 0,
        "initializing": 0,
        "running": state.workers_running if active else 0,
        "succeeded": 0,
        "failed": 0,
        "stalled": 0,
    }
