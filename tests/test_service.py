"""The local runner: it hosts the machine's embedded cluster and takes every next job (of the
same environment) for ``batchapi.keep-alive`` seconds after its last one, then exits."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest
from conftest import run_cli, wait_for, write_json, write_project

HANDLER = """
    import time
    class Handler:
        def __init__(self, config):
            self.sleep = config.get("sleep", 0)
        def handle_batch(self, payload, batch_id):
            time.sleep(self.sleep)
    """

WARM = {"DASK_BATCHAPI__KEEP_ALIVE": "4"}


@pytest.fixture
def api(tmp_path, store_dir):
    result = run_cli("deploy", str(write_project(tmp_path / "proj", HANDLER, name="warm")))
    assert result.returncode == 0, result.stderr
    return "warm"


def _submit(tmp_path, items=4, workers=1, sleep=0.0, name="s.json") -> str:
    sub = {"workers": workers, "item_list": {"items": list(range(items)), "batch_size": 1}}
    sub["config"] = {"sleep": sleep}
    result = run_cli("submit", "warm", str(write_json(tmp_path / name, sub)), env=WARM)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[0]


def _state(store_dir, job_id: str) -> dict:
    return json.loads((store_dir / "jobs" / "warm" / job_id / "state.json").read_text())


def _final(store_dir, job_id: str, timeout: float = 60) -> dict:
    return wait_for(
        lambda: (s := _state(store_dir, job_id))["status"] in ("succeeded", "stopped") and s,
        timeout,
        f"job {job_id} to end",
    )


def _sockets() -> set[str]:
    import tempfile
    from pathlib import Path

    base = Path(tempfile.gettempdir()) / f"dask-batchapi-{os.getuid()}"
    return {p.name for p in base.glob("*.sock")} if base.exists() else set()


def test_next_job_runs_on_the_warm_runner_which_exits_when_idle(api, tmp_path, store_dir):
    sockets_before = _sockets()
    first = _submit(tmp_path)
    pid = _final(store_dir, first)["driver"]["pid"]
    assert psutil.pid_exists(pid)  # kept warm after its job
    ours = _sockets() - sockets_before
    assert len(ours) == 1
    second = _submit(tmp_path, name="s2.json")
    state = _final(store_dir, second)
    assert state["driver"]["pid"] == pid and state["succeeded"] == 4
    # idle for keep-alive seconds: the runner closes its cluster and exits, socket removed
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 30, "exit"
    )
    assert not ours & _sockets()
    third = _submit(tmp_path, name="s3.json")
    assert _final(store_dir, third)["driver"]["pid"] != pid  # a new runner


def test_concurrent_jobs_share_the_warm_runner(api, tmp_path, store_dir):
    first = _submit(tmp_path, items=60, sleep=0.1)
    pid = wait_for(lambda: _state(store_dir, first).get("driver", {}).get("pid"), 30, "driver")
    wait_for(lambda: _state(store_dir, first)["status"] == "running", 30, "running")
    second = _submit(tmp_path, items=3, name="s2.json")
    # the second job is taken at once, on the cluster's other worker while the first still
    # runs, and finishes first
    assert _final(store_dir, second)["driver"]["pid"] == pid
    assert _state(store_dir, first)["status"] == "running"
    assert _final(store_dir, first)["succeeded"] == 60


def test_a_job_asking_more_workers_runs_on_the_same_cluster_another_environment_does_not(
    api, tmp_path, store_dir
):
    one = _submit(tmp_path, workers=1)
    pid = _final(store_dir, one)["driver"]["pid"]
    two = _submit(tmp_path, workers=9, name="s2.json")  # more than the cluster has: runs anyway
    assert _final(store_dir, two)["driver"]["pid"] == pid
    # other settings need a driver with those settings: its own runner
    sub = {"item_list": {"items": [1, 2], "batch_size": 1}}
    env = {**WARM, "DASK_BATCHAPI__PREFETCH": "3"}
    result = run_cli("submit", "warm", str(write_json(tmp_path / "s3.json", sub)), env=env)
    assert result.returncode == 0, result.stderr
    assert _final(store_dir, result.stdout.split()[0])["driver"]["pid"] != pid


def test_killed_warm_runner_leaves_resumable_jobs_and_a_stale_socket_is_replaced(
    api, tmp_path, store_dir
):
    first = _submit(tmp_path)
    pid = _final(store_dir, first)["driver"]["pid"]
    second = _submit(tmp_path, items=50, sleep=0.2, name="s2.json")
    wait_for(lambda: _state(store_dir, second)["succeeded"] >= 2, 30, "progress")
    assert _state(store_dir, second)["driver"]["pid"] == pid
    os.kill(pid, signal.SIGKILL)  # its socket file stays behind
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 10, "kill"
    )
    # the stale socket must not swallow the resume: a new runner takes it
    resumed = run_cli("resume", "warm", second, "--wait", env=WARM, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    state = _state(store_dir, second)
    assert state["status"] == "succeeded" and state["succeeded"] == 50
    assert state["driver"]["pid"] != pid


def test_runner_of_a_scheduler_address_stays_connected_for_the_next_job(api, tmp_path, store_dir):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        sub = {"item_list": {"items": [1, 2, 3], "batch_size": 1}}
        path = str(write_json(tmp_path / "a.json", sub))
        ids = []
        for _ in range(2):
            result = run_cli("submit", "warm", path, "--cluster", address, env=WARM)
            assert result.returncode == 0, result.stderr
            ids.append(result.stdout.split()[0])
            _final(store_dir, ids[-1])
        first, second = (_state(store_dir, i) for i in ids)
        assert first["driver"]["pid"] == second["driver"]["pid"]
        assert second["succeeded"] == 3
        pid = first["driver"]["pid"]
        wait_for(
            lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
            30,
            "exit",
        )


def test_a_second_runner_for_a_job_already_driven_leaves_it_alone(api, tmp_path, store_dir):
    """E.g. a warm runner took the job but its answer was lost, so submit started a runner."""
    import subprocess
    import sys

    job = _submit(tmp_path, items=80, sleep=0.1)
    wait_for(lambda: _state(store_dir, job)["status"] == "running", 30, "running")
    pid = _state(store_dir, job)["driver"]["pid"]
    cmd = [sys.executable, "-m", "dask_batchapi.driver", "--store", str(store_dir)]
    second = subprocess.run([*cmd, "warm", job], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "already driven" in second.stderr
    state = _final(store_dir, job)
    assert state["driver"]["pid"] == pid and state["run"] == 1 and state["succeeded"] == 80
