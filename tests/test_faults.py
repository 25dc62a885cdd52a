"""Fault tolerance with real processes: SIGKILLed workers and drivers, OOM, timeouts, stop."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from conftest import run_cli, wait_for, write_json, write_project

import dask_batchapi as batchapi

MARKING_HANDLER = """
    import os, time, uuid
    class Handler:
        def __init__(self, config):
            self.config = config
        def handle_batch(self, payload, batch_id):
            time.sleep(self.config.get("sleep", 0.05))
            with open(os.path.join(self.config["marks"], "calls"), "a") as f:
                f.write(f"{batch_id} {os.getpid()} {time.time()}\\n")
            return payload
        def on_job_complete(self):
            with open(os.path.join(self.config["marks"], "complete"), "a") as f:
                f.write("done\\n")
    """


def _calls(marks: Path) -> list[tuple[str, int, float]]:
    path = marks / "calls"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(b, int(p), float(t)) for b, p, t in rows]


@pytest.fixture
def marking_api(tmp_path, store_dir):
    return batchapi.deploy(write_project(tmp_path / "marking", MARKING_HANDLER, name="marking"))


def test_worker_sigkilled_three_times_loses_nothing(marking_api, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = marking_api.submit(
        {
            "workers": 2,
            "item_list": {"items": list(range(150)), "batch_size": 1},
            "config": {"marks": str(marks), "sleep": 0.05},
            "output": str(tmp_path / "out"),
        }
    )
    killed: set[int] = set()
    for round_ in range(3):

        def victim(round_=round_):
            calls = _calls(marks)
            pids = [p for _, p, _ in calls[-4:] if p not in killed and psutil.pid_exists(p)]
            return pids[-1] if len(calls) >= 20 * (round_ + 1) and pids else None

        pid = wait_for(victim, 60, f"a live worker to kill (round {round_ + 1})")
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    assert job.wait(timeout=120) == "succeeded"
    metrics = job.metrics
    assert metrics["succeeded"] == 150 and metrics["dead_lettered"] == 0
    assert metrics["lost"] >= 1  # reruns of the killed workers' batches, reported apart
    assert metrics["failed"] == 0  # a lost worker is not a handler failure
    ran = {b for b, _, _ in _calls(marks)}
    assert len(ran) == 150  # every batch processed at least once
    parts = sorted((tmp_path / "out" / job.job_id).iterdir())
    assert len(parts) == 150  # and its output written exactly once
    assert sorted(int(p.read_text()) for p in parts) == list(range(150))


def test_driver_sigkilled_then_resumed(marking_api, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = marking_api.submit(
        {
            "workers": 2,
            "item_list": {"items": list(range(120)), "batch_size": 1},
            "config": {"marks": str(marks), "sleep": 0.1},
        }
    )
    wait_for(lambda: len(_calls(marks)) >= 30, 60, "30 batches to run")
    driver_pid = job.status["job_status"].get("driver_pid") or _driver_pid(job)
    driver = psutil.Process(driver_pid)
    children = driver.children(recursive=True)
    os.kill(driver_pid, signal.SIGKILL)
    killed_at = time.time()
    # the job's worker processes die with the process that hosted them
    wait_for(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
        30,
        "the workers to exit",
    )
    before = {b for b, _, _ in _calls(marks)}
    result = run_cli("resume", "marking", job.job_id, "--wait")
    assert result.returncode == 0, result.stderr
    assert job.status["job_status"]["status"] == "succeeded"
    assert job.metrics["succeeded"] == 120
    calls = _calls(marks)
    assert {b for b, _, _ in calls} == {b for b, _, _ in calls} | before
    assert len({b for b, _, _ in calls}) == 120
    first_end: dict[str, float] = {}
    for b, _, t in calls:
        first_end.setdefault(b, t)
    rerun = {b for b in first_end if sum(1 for c in calls if c[0] == b) > 1}
    # only batches that finished within the last checkpoint window before the crash rerun
    window = 1.0 + 0.25 + 0.5  # checkpoint interval + chunk target (results come per chunk) + slack
    assert all(first_end[b] >= killed_at - window for b in rerun), sorted(rerun)
    assert (marks / "complete").read_text() == "done\n"  # on_job_complete ran once


def _driver_pid(job) -> int:
    from dask_batchapi.status import JobState

    state = JobState.from_dict(job.client.store.read_state(job.api_name, job.job_id))
    return state.driver["pid"]


def test_resume_refused_while_driver_alive(marking_api, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = marking_api.submit(
        {
            "item_list": {"items": list(range(50)), "batch_size": 1},
            "config": {"marks": str(marks), "sleep": 0.2},
        }
    )
    wait_for(lambda: job.status["job_status"]["status"] == "running", 60, "running")
    result = run_cli("resume", "marking", job.job_id)
    assert result.returncode != 0 and "driver is alive" in result.stderr
    job.stop()
    assert job.wait(timeout=30) == "stopped"


def test_job_timeout_cancels_within_seconds(marking_api, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = marking_api.submit(
        {
            "workers": 1,
            "timeout": 3,
            "item_list": {"items": list(range(100)), "batch_size": 1},
            "config": {"marks": str(marks), "sleep": 0.3},
        }
    )
    assert job.wait(timeout=60) == "timed_out"
    status = job.status["job_status"]
    from dask_batchapi.status import parse_iso

    assert parse_iso(status["end_time"]) - parse_iso(status["created_time"]) < 3 + 3
    assert status["error"]["reason"] == "timeout"
    count = len(_calls(marks))
    time.sleep(1.5)
    assert len(_calls(marks)) <= count + 1  # nothing keeps running


def test_out_of_memory_ends_worker_oom(tmp_path, store_dir, monkeypatch):
    # the shared embedded cluster is sized by batchapi.local, not by one API's compute.mem
    monkeypatch.setenv("DASK_BATCHAPI__LOCAL__MEMORY_LIMIT", "400MiB")
    project = write_project(
        tmp_path / "hog",
        """
        import time
        class Handler:
            def handle_batch(self, payload):
                if "hog" in payload:
                    hog = b"x" * (700 * 2**20)
                    time.sleep(5)
        """,
        spec="""
        name: hog
        kind: BatchAPI
        handler: {type: python, path: handler.py}
        compute: {mem: 400Mi}
        """,
    )
    job = batchapi.deploy(project).submit(
        {"workers": 1, "item_list": {"items": ["a", "b", "hog", "c"], "batch_size": 1}}
    )
    assert job.wait(timeout=120) == "worker_oom"
    status = job.status["job_status"]
    assert status["error"]["reason"] == "out_of_memory"
    assert "out of memory" in status["error"]["message"]


STUCK_HANDLER = """
    import time
    class Handler:
        def handle_batch(self, payload):
            if payload == ["spin"]:
                while True:
                    pass
            if payload == ["sleep"]:
                time.sleep(120)
    """


def test_batch_timeout_fails_stuck_batches(tmp_path, store_dir, monkeypatch):
    monkeypatch.setenv("DASK_BATCHAPI__BATCH_TIMEOUT_GRACE", "1")
    api = batchapi.deploy(write_project(tmp_path / "stuck", STUCK_HANDLER, name="stuck"))
    job = api.submit(
        {
            "workers": 1,
            "batch_timeout": 1,
            "item_list": {"items": ["a", "spin", "b", "sleep", "c"], "batch_size": 1},
        }
    )
    started = time.time()
    assert job.wait(timeout=90) == "completed_with_failures"
    assert time.time() - started < 60
    records = {r["payload"][0]: r for r in job.dead_letter()}
    assert set(records) == {"spin", "sleep"}
    assert all(r["error_type"] == "BatchTimeout" for r in records.values())
    assert job.metrics["succeeded"] == 3


def test_on_job_complete_error_is_worker_error(tmp_path, store_dir):
    project = write_project(
        tmp_path / "p",
        """
        class Handler:
            def handle_batch(self, payload):
                pass
            def on_job_complete(self):
                raise IOError("webhook unreachable")
        """,
        name="hook",
    )
    job = batchapi.deploy(project).submit({"item_list": {"items": [1, 2], "batch_size": 1}})
    assert job.wait(timeout=60) == "worker_error"
    error = job.status["job_status"]["error"]
    assert error["reason"] == "on_job_complete" and "webhook unreachable" in error["message"]


def test_stop_from_cli_ends_job_and_no_new_batch_starts(marking_api, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    sub = write_json(
        tmp_path / "s.json",
        {
            "workers": 2,
            "item_list": {"items": list(range(200)), "batch_size": 1},
            "config": {"marks": str(marks), "sleep": 0.1},
        },
    )
    job_id = run_cli("submit", "marking", str(sub)).stdout.split()[0]
    wait_for(lambda: len(_calls(marks)) >= 5, 60, "batches to run")
    t0 = time.time()
    assert run_cli("stop", "marking", job_id).returncode == 0
    job = batchapi.get_job("marking", job_id)
    assert job.wait(timeout=30) == "stopped"
    assert time.time() - t0 < 8
    count = len(_calls(marks))
    time.sleep(1.0)
    assert len(_calls(marks)) <= count + 2
    assert (
        json.loads(run_cli("get", "marking", job_id, "-o", "json").stdout)["job_status"]["status"]
        == "stopped"
    )


def test_a_job_deleted_under_its_driver_ends_without_writing_it_back(marking_api, tmp_path):
    """`delete` gives running jobs 15 s to stop, then removes them anyway: the driver must
    notice and end without recreating any file of the job."""
    from dask_batchapi.store.jobstore import JobStore

    marks = tmp_path / "marks"
    marks.mkdir()
    job = marking_api.submit(
        {
            "item_list": {"items": list(range(200)), "batch_size": 1},
            "config": {"marks": str(marks), "sleep": 0.1},
        }
    )
    wait_for(lambda: job.status["job_status"]["status"] == "running", 60, "running")
    store = JobStore(str(tmp_path / "store"))
    job_dir = tmp_path / "store" / "jobs" / "marking" / job.job_id
    pid = json.loads((job_dir / "state.json").read_text())["driver"]["pid"]
    store.delete_api("marking")  # what delete does after its wait
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
        30,
        "the driver to exit",
    )
    time.sleep(1.5)  # a checkpoint or heartbeat interval after the end
    assert not job_dir.exists()
    assert len(_calls(marks)) < 200  # it did stop early
