"""One set of store tests, run against every kind of store: a local directory and S3 (moto's
server), as huey runs one test set against every storage backend."""

from __future__ import annotations

import hashlib

import pytest

from dask_batchapi.errors import APINotFound, JobNotFound, StoreError
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.spec.submission import parse_submission
from dask_batchapi.store import JobStore, StoredItems

API = "store-api"
ARCHIVE = b"PK-archive"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> JobStore:
    if request.param == "local":
        return JobStore(str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    server = request.getfixturevalue("s3_server")
    return JobStore(f"s3://{bucket}/batchapi", storage_options=server.storage_options)


def _api(store: JobStore, name: str = API) -> dict:
    record = {
        "name": name,
        "spec": {"name": name},
        "signature": {},
        "archive_sha256": hashlib.sha256(ARCHIVE).hexdigest(),
        "files": [],
    }
    store.put_api(record, ARCHIVE)
    return record


def _record(items=None, **submission) -> JobRecord:
    data = {"item_list": {"items": items or [1, 2, 3], "batch_size": 2}, **submission}
    return JobRecord.new(API, parse_submission(data), cluster="local", archive_sha256="ab" * 32)


def test_apis_round_trip_and_list(store):
    record = _api(store)
    assert store.get_api(API) == record
    assert store.get_archive(API, record["archive_sha256"]) == ARCHIVE
    assert [a["name"] for a in store.list_apis()] == [API]
    store.delete_api(API)
    assert store.list_apis() == []
    with pytest.raises(APINotFound, match="deploy it first"):
        store.get_api(API)


def test_a_missing_archive_is_one_clear_error(store):
    _api(store)
    with pytest.raises(StoreError, match="project archive cdcdcdcdcdcd of API 'store-api' is missing"):
        store.get_archive(API, "cd" * 32)


def test_job_records_round_trip_typed_with_items_stored_apart(store):
    _api(store)
    record = _record(items=list(range(25_000)), workers=3)
    store.create_job(record)
    loaded = store.get_job(API, record.job_id)
    assert isinstance(loaded.submission.source.items, StoredItems)
    assert list(loaded.submission.source.items) == list(range(25_000))
    assert loaded.job_id == record.job_id and loaded.workers == 3
    assert store.get_job_dict(API, record.job_id) == record.to_dict()
    assert store.segments(API, record.job_id, "items") == ["00000000.json", "00000001.json", "00000002.json"]


def test_job_ids_list_newest_first(store):
    _api(store)
    first, second = _record(), _record()
    store.create_job(first)
    store.create_job(second)
    assert store.list_job_ids(API) == sorted([first.job_id, second.job_id])
    assert store.list_job_ids(API)[0] == min(first.job_id, second.job_id)


def test_unknown_jobs_and_hostile_names(store):
    _api(store)
    with pytest.raises(JobNotFound, match="no job '0000000000000000'"):
        store.get_job(API, "0" * 16)
    with pytest.raises(JobNotFound, match="16 hex digits"):
        store.get_job(API, "../../etc/passwd")
    with pytest.raises(APINotFound, match="lowercase letters"):
        store.get_api("../apis")


def test_state_pulse_and_stop(store):
    _api(store)
    record = _record()
    store.create_job(record)
    assert store.read_state(API, record.job_id) is None
    store.write_state(API, record.job_id, {"status": "running"})
    assert store.read_state(API, record.job_id) == {"status": "running"}
    assert store.read_pulse(API, record.job_id) is None
    store.write_pulse(API, record.job_id, {"time": 12.5})
    assert store.read_pulse(API, record.job_id) == 12.5
    assert not store.stop_requested(API, record.job_id)
    store.request_stop(API, record.job_id)
    assert store.stop_requested(API, record.job_id)
    store.clear_stop(API, record.job_id)
    assert not store.stop_requested(API, record.job_id)


def test_segments_append_in_order_and_read_back(store):
    _api(store)
    record = _record()
    store.create_job(record)
    store.append_segment(API, record.job_id, "ledger", "r1-000001.json", [0, 1])
    store.append_segment(API, record.job_id, "ledger", "r1-000002.json", [2])
    store.append_segment(API, record.job_id, "logs", "r1-000001.jsonl", ['{"a": 1}', '{"b": 2}'])
    assert list(store.iter_segments(API, record.job_id, "ledger")) == [[0, 1], [2]]
    assert store.segments(API, record.job_id, "ledger", after="r1-000001.json") == ["r1-000002.json"]
    assert store.read_segment(API, record.job_id, "logs", "r1-000001.jsonl") == ['{"a": 1}', '{"b": 2}']


def test_a_corrupt_record_names_its_file(store):
    _api(store)
    record = _record()
    store.create_job(record)
    store.write_bytes(store._job(API, record.job_id, "job.json"), b'{"job_id": ')
    with pytest.raises(StoreError, match="job.json is not valid JSON"):
        store.get_job(API, record.job_id)
    store.write_json(store._job(API, record.job_id, "job.json"), [1, 2])
    with pytest.raises(StoreError, match=f"{API}/{record.job_id}/job.json: a job record must be"):
        store.get_job(API, record.job_id)


def test_deleting_an_api_removes_its_jobs(store):
    _api(store)
    record = _record()
    store.create_job(record)
    store.delete_api(API)
    assert not store.job_exists(API, record.job_id)
