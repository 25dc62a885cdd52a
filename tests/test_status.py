"""The status machine and the status document."""

from __future__ import annotations

import pytest

from dask_batchapi.status import (
    TRANSITIONS,
    JobState,
    JobStatus,
    can_transition,
    status_document,
    utcnow_iso,
)


def test_every_status_has_its_transitions_and_success_is_final():
    assert set(TRANSITIONS) == set(JobStatus)
    assert TRANSITIONS[JobStatus.SUCCEEDED] == frozenset()
    assert can_transition(JobStatus.PENDING, JobStatus.ENQUEUING)
    assert can_transition(JobStatus.RUNNING, JobStatus.COMPLETED_WITH_FAILURES)
    assert can_transition(JobStatus.STOPPED, JobStatus.PENDING)  # resume
    assert not can_transition(JobStatus.SUCCEEDED, JobStatus.PENDING)
    assert not can_transition(JobStatus.PENDING, JobStatus.RUNNING)


def test_terminal_statuses_are_cortexs_final_ones():
    active = {s for s in JobStatus if not s.is_terminal}
    assert active == {JobStatus.PENDING, JobStatus.ENQUEUING, JobStatus.RUNNING}
    assert [s.value for s in JobStatus if s.is_success] == ["succeeded"]


def test_move_to_refuses_an_illegal_transition():
    state = JobState(status="succeeded")
    with pytest.raises(ValueError, match="succeeded -> running"):
        state.move_to(JobStatus.RUNNING)
    state = JobState()
    state.move_to(JobStatus.ENQUEUING)
    state.move_to(JobStatus.RUNNING)
    state.move_to(JobStatus.STOPPED)
    assert state.status == "stopped"


def test_status_document_has_cortexs_shape_and_reports_a_dead_driver():
    record = {
        "job_id": "f" * 16,
        "api_name": "a",
        "created_time": utcnow_iso(),
        "workers": 2,
        "submission": {"item_list": {"items": [1, 2]}},
    }
    state = JobState(
        status="running",
        total_batch_count=10,
        succeeded=4,
        failed=1,
        dead_lettered=1,
        in_flight=2,
        attempts_timed=5,
        batch_seconds=1.0,
        heartbeat=50.0,
    )
    doc = status_document(record, state, {"name": "a"}, now=100.0, heartbeat_timeout=10)
    job = doc["job_status"]
    assert doc["api_spec"] == {"name": "a"}
    assert "submission" not in job  # the items are not repeated in every status
    assert job["batch_metrics"] == {
        "succeeded": 4,
        "failed": 1,
        "average_time_per_batch": 0.2,
        "dead_lettered": 1,
        "lost": 0,
    }
    assert job["batches_in_queue"] == 10 - 4 - 1 - 2
    assert set(job["worker_counts"]) >= {
        "pending",
        "initializing",
        "running",
        "succeeded",
        "failed",
        "stalled",
    }
    assert (
        job["interrupted"] is True and job["resume_command"] == f"dask-batchapi resume a {'f' * 16}"
    )
    fresh = JobState(status="running", heartbeat=95.0)
    assert not status_document(record, fresh, {}, now=100.0, heartbeat_timeout=10)["job_status"][
        "interrupted"
    ]
