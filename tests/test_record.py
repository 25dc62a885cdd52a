"""The typed job record: one place of serialisation, old records load, every reader agrees."""

from __future__ import annotations

import pytest
from conftest import write_project

import dask_batchapi as batchapi
from dask_batchapi.errors import StoreError
from dask_batchapi.spec.record import JobRecord, new_job_id
from dask_batchapi.spec.submission import parse_submission

CORTEX_DLQ = {"arn": "arn:aws:sqs:us-west-2:123456789:failed.fifo", "max_receive_count": 3}


def _record(**submission) -> JobRecord:
    data = {"item_list": {"items": [1, 2, 3], "batch_size": 2}, **submission}
    return JobRecord.new("api", parse_submission(data), cluster="local", archive_sha256="ab" * 32)


def test_round_trip_keeps_the_submission_and_the_persisted_shape():
    record = _record(workers=2, config={"a": {"b": 1}}, timeout=30, output="s3://b/out")
    data = record.to_dict()
    assert data["item_list"] == {"batch_size": 2, "item_count": 3}  # items are stored apart
    assert data["workers"] == 2 and data["timeout"] == 30 and data["kind"] == "BatchAPI"
    again = JobRecord.from_dict(data, items=[1, 2, 3])
    assert again == record
    assert again.to_dict() == data


@pytest.mark.parametrize(
    "submission, attempts",
    [({}, 1), ({"dead_letter": {"max_receive_count": 4}}, 4), ({"sqs_dead_letter_queue": CORTEX_DLQ}, 3)],
)
def test_both_dead_letter_forms_give_the_attempt_budget(submission, attempts):
    record = _record(**submission)
    assert record.max_attempts == attempts
    assert JobRecord.from_dict(record.to_dict()).max_attempts == attempts


def test_cortex_dead_letter_form_is_shown_as_given():
    fields = _record(sqs_dead_letter_queue=CORTEX_DLQ).job_fields()
    assert fields["sqs_dead_letter_queue"] == CORTEX_DLQ
    assert "submission" not in fields and "retry_refs" not in fields


def test_known_batch_counts():
    assert _record().known_batch_count == 2
    listed = JobRecord.new(
        "api",
        parse_submission({"file_path_lister": {"s3_paths": ["s3://b/"], "batch_size": 3}}),
        cluster="local",
        archive_sha256="",
        file_count=7,
    )
    assert listed.known_batch_count == 3
    delimited = parse_submission({"delimited_files": {"s3_paths": ["s3://b/"], "batch_size": 3}})
    assert JobRecord.new("api", delimited, cluster="local", archive_sha256="").known_batch_count is None
    assert _record().__class__(**{**_record().__dict__, "retry_refs": ({}, {})}).known_batch_count == 2


def test_records_written_by_earlier_releases_load():
    """The shape of job.json before the typed record: items inline, fields beside it."""
    old = {
        "job_id": new_job_id(),
        "api_name": "api",
        "kind": "BatchAPI",
        "created_time": "2026-01-01T00:00:00.000Z",
        "workers": 1,
        "dead_letter": {"max_receive_count": 2},
        "source": "item_list",
        "item_list": {"batch_size": 2},
        "cluster": "local",
        "archive_sha256": "ab" * 32,
        "retry_of": None,
        "submission": {
            "item_list": {"items": [1, 2, 3], "batch_size": 2},
            "workers": 1,
            "dead_letter": {"max_receive_count": 2},
        },
    }
    record = JobRecord.from_dict(old)
    assert record.submission.source.items == [1, 2, 3] and record.max_attempts == 2


@pytest.mark.parametrize(
    "data, message",
    [
        ([1, 2], "a job record must be a JSON object, got list"),
        ({"job_id": "x"}, "the job record has no 'submission'"),
        ({"job_id": "x", "api_name": "a", "created_time": "t", "submission": {"workers": 1}}, "not valid"),
    ],
)
def test_broken_records_name_the_file(data, message):
    with pytest.raises(StoreError, match=f"api/x/job.json: .*{message}"):
        JobRecord.from_dict(data, where="api/x/job.json")


def test_cortex_sqs_dead_letter_form_gives_every_batch_its_attempts(tmp_path, store_dir):
    """Regression: the driver read only ``dead_letter`` and gave every batch 1 attempt."""
    project = write_project(
        tmp_path / "p",
        """
        class Handler:
            def handle_batch(self, payload):
                if 5 in payload:
                    raise ValueError("bad five")
        """,
        name="cortex-dlq",
    )
    api = batchapi.deploy(project)
    job = api.submit({"item_list": {"items": list(range(8)), "batch_size": 2},
                      "sqs_dead_letter_queue": CORTEX_DLQ})  # fmt: skip
    assert job.wait(timeout=90) == "completed_with_failures"
    [dead] = job.dead_letter()
    assert dead["attempts"] == 3 and dead["payload"] == [4, 5]
    assert job.metrics["failed"] == 3
