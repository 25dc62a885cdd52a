"""Never two drivers: driving a job is an exclusive, numbered lease in the store (issue 15).

Real stores (a local directory, the moto S3 server), real CLI and Python processes, a real
warm runner."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, wait_for, write_json, write_project
from test_faults import MARKING_HANDLER, _calls

from dask_batchapi.errors import JobStateError, LeaseLost
from dask_batchapi.fsutil import create_exclusive
from dask_batchapi.store import JobStore, lease

WARM = {"DASK_BATCHAPI__KEEP_ALIVE": "8"}
JOB = "0123456789abcdef"


def _job_store(url: str, **options) -> JobStore:
    store = JobStore(url, storage_options=options or None)
    store.write_json(store._job("api", JOB, "job.json"), {})
    return store


def test_only_one_of_two_exclusive_creates_wins_locally(tmp_path):
    store = JobStore(str(tmp_path / "store"))
    path = store._path("x", "lock")
    assert create_exclusive(store.fs, path, b"a") is True
    assert create_exclusive(store.fs, path, b"b") is False
    assert store.read_bytes(path) == b"a"


def test_only_one_of_two_exclusive_creates_wins_on_s3(s3_bucket, s3_server):
    store = JobStore(f"s3://{s3_bucket}/store", storage_options=s3_server.storage_options)
    path = store._path("x", "lock")
    assert create_exclusive(store.fs, path, b"a") is True
    assert create_exclusive(store.fs, path, b"b") is False
    assert store.read_bytes(path) == b"a"


def test_a_lease_is_adopted_once_and_a_stale_driver_cannot_write(tmp_path):
    store = _job_store(str(tmp_path / "store"))
    assert lease.acquire(store, "api", JOB, 0, by="submit") == 1
    with pytest.raises(JobStateError, match="another caller"):
        lease.acquire(store, "api", JOB, 0, by="resume")
    first = lease.adopt(store, "api", JOB)
    with pytest.raises(LeaseLost, match="already driven"):
        lease.adopt(store, "api", JOB)  # a second process for the same lease
    first.write_state("api", JOB, {"status": "running"})
    lease.acquire(store, "api", JOB, 1, by="resume")  # the job is resumed elsewhere
    with pytest.raises(LeaseLost, match="lease 2"):
        first.write_state("api", JOB, {"status": "running"})
    with pytest.raises(LeaseLost):
        first.append_segment("api", JOB, "ledger", "r001-000001.json", {"succeeded": [1]})
    assert store.read_state("api", JOB) == {"status": "running"}
    assert store.segments("api", JOB, "ledger") == []


def test_fencing_on_s3(s3_bucket, s3_server):
    store = _job_store(f"s3://{s3_bucket}/store", **s3_server.storage_options)
    first = lease.adopt(store, "api", JOB)  # a job from before leases gets lease 1
    lease.acquire(store, "api", JOB, 1, by="resume")
    with pytest.raises(LeaseLost):
        first.write_state("api", JOB, {"status": "running"})
    second = lease.adopt(store, "api", JOB)
    second.write_state("api", JOB, {"status": "running"})
    second.release()
    assert lease.read(store, "api", JOB, 2).released


RESUME = """
import sys, time
import dask_batchapi as batchapi
from dask_batchapi.errors import BatchAPIError
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
try:
    batchapi.BatchClient().resume_job("marking", sys.argv[2])
    print("resumed")
except BatchAPIError as exc:
    print("refused:", exc)
"""


def test_two_concurrent_resumes_from_python_give_one_driver(tmp_path, store_dir):
    marks = tmp_path / "marks"
    marks.mkdir()
    project = write_project(tmp_path / "marking", MARKING_HANDLER, name="marking")
    assert run_cli("deploy", str(project)).returncode == 0
    items = {"items": list(range(12)), "batch_size": 1}
    sub = {"item_list": items, "config": {"marks": str(marks), "sleep": 0.3}}
    result = run_cli("submit", "marking", str(write_json(tmp_path / "s.json", sub)), env=WARM)
    job = result.stdout.split()[0]
    state = store_dir / "jobs" / "marking" / job / "state.json"
    wait_for(lambda: json.loads(state.read_text())["status"] == "running", 60, "running")
    assert run_cli("stop", "marking", job, env=WARM).returncode == 0
    wait_for(lambda: json.loads(state.read_text())["status"] == "stopped", 60, "stopped")
    time.sleep(0.6)  # a batch running at the stop finishes (at-least-once, not two drivers)
    resumed_at = time.time()
    start = str(time.time() + 6.0)  # both processes are up by then, even on a loaded machine
    env = {**__import__("os").environ, **WARM}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RESUME, start, job], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    answers = sorted(p.communicate(timeout=90)[0].strip() for p in procs)
    assert answers[1] == "resumed" and answers[0].startswith("refused:"), answers
    wait_for(lambda: json.loads(state.read_text())["status"] == "succeeded", 60, "succeeded")
    after = [b for b, _, t in _calls(marks) if t >= resumed_at]
    assert len(after) == len(set(after)), "a batch ran twice after the resume"
    final = json.loads(state.read_text())
    assert final["run"] == 2 and final["succeeded"] == 12
    leases = sorted(p.name for p in (state.parent / "lease").iterdir())
    assert [n for n in leases if n.isdigit()] == ["00000001", "00000002"]


def test_a_released_lease_lets_resume_past_a_live_warm_runner(tmp_path, store_dir):
    """A driver that ended without writing its end (a full store) released its lease: resume
    does not wait for the warm runner that hosted it to exit."""
    store = JobStore(str(store_dir))
    store.write_json(store._job("api", JOB, "job.json"), {})
    lease.acquire(store, "api", JOB, 0, by="submit")
    fenced = lease.adopt(store, "api", JOB)
    from dask_batchapi.driver.liveness import lease_busy

    assert lease_busy(store, "api", JOB, 1, grace=30) is None  # its pid tells
    fenced.release()
    assert lease_busy(store, "api", JOB, 1, grace=30) is False
    Path(store._job("api", JOB, "job.json")).unlink()


def test_a_lease_nobody_adopted_frees_the_job_after_its_grace(tmp_path):
    """A resume whose driver never started (its runner could not launch) blocks others only
    for the start grace, never for good."""
    from dask_batchapi.driver.liveness import lease_busy

    store = _job_store(str(tmp_path / "store"))
    lease.acquire(store, "api", JOB, 0, by="resume")
    assert lease_busy(store, "api", JOB, 1, grace=30) is True
    assert lease_busy(store, "api", JOB, 1, grace=0) is False
    assert lease_busy(store, "api", JOB, 0, grace=30) is False  # a job from before leases
