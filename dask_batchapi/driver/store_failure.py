"""When the store cannot take a driver's writes (a full disk, a bucket gone): end the job.

The driver stops its batches and writes one last, small object, the state, saying
``unexpected_error`` and why (a failed large write frees its temporary file first, so this
small one usually fits). If even that fails, the cause goes to the driver's log, and the lease
is released (:mod:`dask_batchapi.store.lease`), so that ``resume`` does not wait for a driver
that is gone.
"""

from __future__ import annotations

import logging

from dask_batchapi.errors import BatchAPIError, StoreError
from dask_batchapi.status import JobState, JobStatus, utcnow_iso
from dask_batchapi.store.jobstore import JobStore

logger = logging.getLogger(__name__)


def end_on_store_failure(
    store: JobStore, api_name: str, job_id: str, state: JobState, exc: Exception
) -> None:
    """Mark the job ``unexpected_error`` with ``exc`` as its cause, if the store still lets us."""
    logger.error("job %s: the store failed, the job ends: %s", job_id, exc)
    end_with_error(store, api_name, job_id, state, exc, "store")


def end_with_error(
    store: JobStore, api_name: str, job_id: str, state: JobState, exc: Exception, reason: str
) -> None:
    """Write the job's end, ``unexpected_error`` for ``reason``; a store that refuses even
    that gets the cause in the driver's log."""
    # also over a final status whose last checkpoint failed: its last batches are not recorded
    state.status = JobStatus.UNEXPECTED_ERROR.value
    state.error = {"type": type(exc).__name__, "message": str(exc), "reason": reason}
    state.in_flight = 0
    state.end_time = state.end_time or utcnow_iso()
    try:
        store.write_state(api_name, job_id, state.to_dict())
        return
    except BatchAPIError as again:
        logger.error("job %s: its end could not be written: %s", job_id, again)
    if reason != "store":
        return
    store.drop_pulse(api_name, job_id)  # of no use now; on a full disk, room for the state
    try:
        store.write_state(api_name, job_id, state.to_dict())
    except BatchAPIError as again:
        logger.error("job %s: its end could not be written either: %s", job_id, again)


def end_unstarted(store: JobStore, api_name: str, job_id: str, exc: Exception) -> None:
    """The driver failed before its job had a state of its own in memory (the record or the
    state cannot be read, the first write failed): end the job from what the store holds."""
    logger.error("job %s could not start: %s", job_id, exc)
    try:
        state = JobState.from_dict(store.read_state(api_name, job_id))
    except BatchAPIError:
        state = JobState()  # the state itself is what is broken: a new one says why
    reason = "store" if isinstance(exc, StoreError) else "driver"
    end_with_error(store, api_name, job_id, state, exc, reason)
