"""Progress of a job, derived from its status document: the numbers and the update loop.

The design follows distributed's ``diagnostics/progressbar.py``: :class:`ProgressBase` owns the
update loop (poll, build a snapshot, draw, stop on a terminal status) and its subclasses only
draw. They live in :mod:`dask_batchapi.api.widgets`: the tqdm text bar and the notebook widget.

The loop only reads status documents through a ``poll`` callable, so it works the same for a job
driven in this process, by a detached driver, or by another machine sharing the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from dask_batchapi.status import JobStatus

logger = logging.getLogger(__name__)

#: Seconds of recent snapshots the live rate is averaged over.
RATE_WINDOW = 10.0
#: A window shorter than this says more about polling jitter than about throughput.
_MIN_RATE_SPAN = 1.0

_Sample = tuple[float, int]  # (time of the snapshot, batches done)


@dataclass(frozen=True)
class ProgressSnapshot:
    """The numbers of one status document, plus a rate smoothed over the previous snapshots.

    ``done`` counts batches that are final: ``succeeded + dead_lettered``. ``failed_attempts`` is
    Cortex's ``batch_metrics.failed`` (attempts, not batches). ``rate`` is in batches/s; ``eta``
    and ``elapsed`` in seconds. ``terminal`` is true for a final status and for an interrupted
    job (its driver died: polling it longer would show ``running`` forever); ``ok`` only for
    ``succeeded``.

    >>> doc = {"job_status": {"status": "succeeded", "total_batch_count": 10,
    ...        "start_time": 0, "end_time": 2.0, "batch_metrics": {"succeeded": 10}}}
    >>> s = ProgressSnapshot.from_status(doc)
    >>> s.done, s.ok, s.rate
    (10, True, 5.0)
    """

    status: str
    done: int
    succeeded: int
    failed_attempts: int
    dead_lettered: int
    total: int | None
    elapsed: float
    rate: float | None
    eta: float | None
    workers: int
    dashboard_link: str | None
    error: str | None
    terminal: bool
    ok: bool
    interrupted: bool = False
    resume_command: str | None = None
    api_name: str | None = None
    job_id: str | None = None
    items_succeeded: int = 0
    items_dead_lettered: int = 0
    items_not_attempted: int | None = None  # known once the job ended (None: unknown)
    triggered_by: dict | None = None  # {"api_name", "job_id"} of the job that submitted it
    triggered: tuple[dict, ...] = ()  # the jobs its handler code submitted
    _samples: tuple[_Sample, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_status(
        cls,
        doc: dict,
        previous: ProgressSnapshot | None = None,
        now: float | None = None,
    ) -> ProgressSnapshot:
        """Build the snapshot of ``doc`` at time ``now`` (epoch seconds, default: the clock)."""
        now = time.time() if now is None else now
        job = doc.get("job_status", doc)
        metrics = job.get("batch_metrics") or {}
        succeeded = _as_int(metrics.get("succeeded"))
        dead_lettered = _as_int(metrics.get("dead_lettered"))
        done = succeeded + dead_lettered
        total = None if job.get("total_batch_count") is None else _as_int(job["total_batch_count"])
        status = str(job.get("status") or JobStatus.PENDING)
        interrupted = bool(job.get("interrupted"))
        terminal = _is_terminal(status) or interrupted
        elapsed = _elapsed(job, now)
        samples = _recent_samples(previous, now, done)
        rate = _rate(samples, done, elapsed, terminal, previous)
        return cls(
            status=status,
            done=done,
            succeeded=succeeded,
            failed_attempts=_as_int(metrics.get("failed")),
            dead_lettered=dead_lettered,
            total=total,
            elapsed=elapsed,
            rate=rate,
            eta=None if terminal else _eta(total, done, rate),
            workers=_as_int(job.get("workers")),
            dashboard_link=job.get("dashboard_link") or None,
            error=_error_text(job.get("error")),
            terminal=terminal,
            ok=status == JobStatus.SUCCEEDED and not interrupted,
            interrupted=interrupted,
            resume_command=job.get("resume_command") or None,
            api_name=job.get("api_name"),
            job_id=job.get("job_id"),
            **_item_counts(job),
            triggered_by=_job_ref(job.get("triggered_by")),
            triggered=tuple(r for r in map(_job_ref, job.get("triggered") or ()) if r),
            _samples=samples,
        )

    @property
    def item_failures(self) -> bool:
        """Whether some items are dead-lettered or were never attempted (worth showing)."""
        return bool(self.items_dead_lettered or self.items_not_attempted)

    @property
    def percent(self) -> int | None:
        """Whole percent of batches done (floored: 100 only when every batch is final)."""
        if self.total is None:
            return None
        if self.total == 0:
            return 100 if self.terminal else 0
        return min(100, 100 * self.done // self.total)


def _item_counts(job: dict) -> dict:
    items = job.get("item_metrics") or {}
    missing = items.get("not_attempted")
    return {
        "items_succeeded": _as_int(items.get("succeeded")),
        "items_dead_lettered": _as_int(items.get("dead_lettered")),
        "items_not_attempted": None if missing is None else _as_int(missing),
    }


def format_items(s: ProgressSnapshot) -> str:
    """``items: 998 succeeded, 2 dead-lettered, 0 not attempted`` (``?``: not known yet).

    >>> doc = {"job_status": {"status": "completed_with_failures", "item_metrics":
    ...        {"succeeded": 998, "dead_lettered": 2, "not_attempted": 0}}}
    >>> format_items(ProgressSnapshot.from_status(doc))
    'items: 998 succeeded, 2 dead-lettered, 0 not attempted'
    """
    missing = "?" if s.items_not_attempted is None else s.items_not_attempted
    return (
        f"items: {s.items_succeeded} succeeded, {s.items_dead_lettered} dead-lettered, "
        f"{missing} not attempted"
    )


def _job_ref(value: Any) -> dict | None:
    """``{"api_name", "job_id"}`` as strings, or None for anything else (a garbled store)."""
    if not isinstance(value, dict) or not value.get("api_name") or not value.get("job_id"):
        return None
    return {"api_name": str(value["api_name"]), "job_id": str(value["job_id"])}


def _as_int(value: Any) -> int:
    # The document comes from a store other processes write: a garbled field must not kill
    # the display of everything else.
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _is_terminal(status: str) -> bool:
    try:
        return JobStatus(status).is_terminal
    except ValueError:  # a status from a newer version: don't poll it forever
        return True


def _timestamp(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 timestamp (``Z`` suffix accepted) or of a number."""
    if value is None or isinstance(value, (int, float)):
        return value
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:  # the store writes UTC
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _elapsed(job: dict, now: float) -> float:
    start = _timestamp(job.get("start_time"))
    if start is None:  # not started yet: count from submission
        start = _timestamp(job.get("created_time"))
    if start is None:
        return 0.0
    end = _timestamp(job.get("end_time"))
    return max(0.0, (end if end is not None else now) - start)


def _recent_samples(previous: ProgressSnapshot | None, now: float, done: int) -> tuple:
    samples = previous._samples if previous is not None else ()
    if samples and done < samples[-1][1]:  # resumed or rewritten: the old rate means nothing
        samples = ()
    samples = (*samples, (now, done))
    # Keep one sample at or before the window's start so the window spans RATE_WINDOW.
    while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
        samples = samples[1:]
    return samples


def _rate(samples, done, elapsed, terminal, previous) -> float | None:
    if terminal:  # the final rate is the job's throughput, not the last few seconds'
        return done / elapsed if elapsed > 0 else None
    (t0, done0), (t1, done1) = samples[0], samples[-1]
    if t1 - t0 >= _MIN_RATE_SPAN:
        return (done1 - done0) / (t1 - t0)
    if previous is not None and previous.rate is not None:
        return previous.rate
    return done / elapsed if elapsed > 0 and done > 0 else None


def _eta(total: int | None, done: int, rate: float | None) -> float | None:
    if total is None or not rate or rate <= 0:
        return None
    return max(0, total - done) / rate


def _error_text(error: Any) -> str | None:
    if not error:
        return None
    if isinstance(error, dict):
        kind, message = error.get("type"), error.get("message")
        return f"{kind}: {message}" if kind and message else str(kind or message or error)
    return str(error)


def format_duration(seconds: float) -> str:
    """``2.4s``, ``1m 05s``, ``2h 03m``.

    >>> format_duration(65)
    '1m 05s'
    """
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def count_noun(n: int, noun: str) -> str:
    """``1 worker``, ``2 workers``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def status_label(s: ProgressSnapshot) -> str:
    """``✓ succeeded``, ``✗ worker_error``, ``✗ interrupted (running)`` or the live status."""
    if s.interrupted:
        return f"✗ interrupted ({s.status})"
    if s.terminal:
        return f"{'✓' if s.ok else '✗'} {s.status}"
    return s.status


def format_summary(s: ProgressSnapshot) -> str:
    """One line for a log or a terminal.

    >>> doc = {"job_status": {"status": "succeeded", "total_batch_count": 500, "workers": 2,
    ...        "start_time": 0, "end_time": 2.5, "batch_metrics": {"succeeded": 500}}}
    >>> format_summary(ProgressSnapshot.from_status(doc))
    '✓ succeeded  500/500 batches  0 failed attempts  200.0 batches/s  elapsed 2.5s  2 workers'
    """
    total = "?" if s.total is None else s.total
    parts = [status_label(s), f"{s.done}/{total} batches"]
    if s.dead_lettered:
        parts.append(f"{s.dead_lettered} dead-lettered")
    parts.append(count_noun(s.failed_attempts, "failed attempt"))
    if s.item_failures:
        parts.append(format_items(s))
    if s.rate is not None:
        parts.append(f"{s.rate:.1f} batches/s")
    parts.append(f"elapsed {format_duration(s.elapsed)}")
    if s.eta is not None:
        parts.append(f"ETA {format_duration(s.eta)}")
    parts.append(count_noun(s.workers, "worker"))
    if s.error:
        parts.append("error: " + " ".join(s.error.split()))
    if s.interrupted and s.resume_command:
        parts.append(f"resume with: {s.resume_command}")
    return "  ".join(parts)


class ProgressBase:
    """Owns the update loop; subclasses only draw: ``_draw``, ``_draw_stop``, ``_close``.

    ``poll()`` returns the job's status document. The loop draws every ``interval`` seconds
    until the status is terminal, then polls once more and draws that document, so the display
    always ends on the true final state even if the record was finalized in several writes.

    >>> docs = iter([{"job_status": {"status": "running"}},
    ...              {"job_status": {"status": "succeeded"}}])
    >>> last = {"job_status": {"status": "succeeded"}}
    >>> ProgressBase(lambda: next(docs, last), interval=0).run()["job_status"]["status"]
    'succeeded'
    """

    def __init__(self, poll: Callable[[], dict], interval: float = 0.25):
        self._poll = poll
        self.interval = interval
        self.exception: BaseException | None = None  # what ended a start()ed loop early
        self._last_snapshot: ProgressSnapshot | None = None
        self._stop_event = threading.Event()
        self._wake = threading.Event()  # poll now instead of after `interval`
        self._thread: threading.Thread | None = None

    @property
    def last_snapshot(self) -> ProgressSnapshot | None:
        return self._last_snapshot

    def run(self) -> dict:
        """Draw until the job is final (or :meth:`stop` is called); return the last document."""
        try:
            return self._loop()
        finally:  # also on stop(), a poll error or Ctrl-C: leave the output tidy
            self._close()

    def _loop(self) -> dict:
        doc = self._poll()
        while not self._update(doc).terminal:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop_event.is_set():
                return doc
            doc = self._poll()
        final = self._poll()
        snapshot = ProgressSnapshot.from_status(final, self._last_snapshot)
        if not snapshot.terminal:  # reopened (resume) since: end on the final state we saw
            final, snapshot = doc, ProgressSnapshot.from_status(doc, self._last_snapshot)
        self._show(snapshot)
        self._draw_stop(snapshot)
        return final

    def start(self) -> None:
        """Run the loop in a daemon thread and return at once (a notebook kernel stays free)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop_event.clear()
        self._thread = threading.Thread(
            target=self._run_in_thread, name="batchapi-progress", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end after its current poll, without a final draw."""
        self._stop_event.set()
        self._wake.set()

    def finish(self, timeout: float | None = 10) -> bool:
        """Poll now and wait until a :meth:`start`-ed loop has drawn the final state."""
        self._wake.set()
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a :meth:`start`-ed loop; True if it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except Exception as exc:  # a thread has nobody to raise to
            self.exception = exc
            logger.warning("job progress display stopped: %s", exc)

    def _update(self, doc: dict) -> ProgressSnapshot:
        return self._show(ProgressSnapshot.from_status(doc, self._last_snapshot))

    def _show(self, snapshot: ProgressSnapshot) -> ProgressSnapshot:
        self._last_snapshot = snapshot
        self._draw(snapshot)
        return snapshot

    def _draw(self, snapshot: ProgressSnapshot) -> None:
        """Show ``snapshot``; called for every poll, the final one included."""

    def _draw_stop(self, snapshot: ProgressSnapshot) -> None:
        """Called once after the final draw."""

    def _close(self) -> None:
        """Called when the loop ends, however it ends."""
