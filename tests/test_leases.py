"""Worker leases and the job queue, on real clusters: no cross-talk between concurrent jobs,
priority order and queue positions, a killed driver's leases freed, one local cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli, wait_for, write_json, write_project
from distributed import Client, LocalCluster

import dask_batchapi as batchapi
from dask_batchapi.errors import SubmissionError
from dask_batchapi.spec.submission import parse_submission

HANDLER = """
    import os, time
    import utils

    class Handler:
        def __init__(self, config):
            self.sleep = config.get("sleep", 0.01)
        def handle_batch(self, payload, batch_id):
            start = time.time()
            time.sleep(self.sleep)
            return {"who": utils.WHO, "secret": os.environ.get("SECRET"),
                    "alpha_only": os.environ.get("ALPHA_ONLY"), "cwd": os.getcwd(),
                    "pid": os.getpid(), "start": start, "end": time.time()}
    """
ENV = {"alpha": "SECRET=alpha\nALPHA_ONLY=1\n", "beta": "SECRET=beta\n"}


def _project(tmp_path, name: str):
    files = {"utils.py": f"WHO = {name!r}\n", ".env": ENV.get(name, f"SECRET={name}\n")}
    return write_project(tmp_path / name, HANDLER, name=name, files=files)


def _outputs(out, job_id) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / job_id).iterdir())]


def _items(n: int, workers: int, out, sleep: float = 0.01, **extra) -> dict:
    sub = {"workers": workers, "item_list": {"items": list(range(n)), "batch_size": 1}}
    return {**sub, "output": str(out), "config": {"sleep": sleep}, **extra}


def _driver_pid(store_dir, api: str, job_id: str) -> int:
    state = json.loads((store_dir / "jobs" / api / job_id / "state.json").read_text())
    return state["driver"]["pid"]


def _no_worker_served_two_jobs_at_once(runs: dict[str, list[dict]]) -> None:
    """Per worker process, every batch of one job ends before any batch of another starts
    there, or starts after all of them ended (the jobs' spans on it never overlap)."""
    spans: dict[int, list[tuple[float, float, str]]] = {}
    for job_id, parts in runs.items():
        for pid in {p["pid"] for p in parts}:
            mine = [p for p in parts if p["pid"] == pid]
            first, last = min(p["start"] for p in mine), max(p["end"] for p in mine)
            spans.setdefault(pid, []).append((first, last, job_id))
    for pid, jobs in spans.items():
        jobs.sort()
        for (_, end, a), (start, _, b) in zip(jobs, jobs[1:], strict=False):
            assert end <= start, f"worker {pid} ran jobs {a} and {b} at overlapping times"


@pytest.fixture(scope="module")
def two_workers():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


def test_two_apis_at_once_on_two_workers_never_cross(two_workers, tmp_path):
    client = batchapi.client(store=str(tmp_path / "store"), cluster=two_workers)
    alpha, beta = (client.deploy(_project(tmp_path, n)) for n in ("alpha", "beta"))
    out = tmp_path / "out"
    jobs = [alpha.submit(_items(40, 1, out, 0.05)), beta.submit(_items(40, 1, out, 0.05))]
    jobs += [alpha.submit(_items(30, 2, out)), beta.submit(_items(30, 2, out))]
    assert [job.wait(timeout=90) for job in jobs] == ["succeeded"] * 4
    runs = {}
    for api, job in zip([alpha, beta, alpha, beta], jobs, strict=True):
        parts = runs[job.job_id] = _outputs(out, job.job_id)
        assert {p["who"] for p in parts} == {api.name}  # its own utils.py
        assert {p["secret"] for p in parts} == {api.name}  # its own .env
        assert all(p["cwd"].endswith(job.job_id) for p in parts)
        if api.name == "beta":
            assert {p["alpha_only"] for p in parts} == {None}  # alpha's .env never leaked
    a, b = (runs[j.job_id] for j in jobs[:2])
    assert max(p["start"] for p in a) > min(p["end"] for p in b)  # they ran at once ...
    assert {p["pid"] for p in a}.isdisjoint(p["pid"] for p in b)  # ... each on its own worker
    _no_worker_served_two_jobs_at_once(runs)
    status = client.cluster_status()
    assert [w["state"] for w in status["workers"]] == ["free", "free"] and not status["jobs"]


def test_priority_then_submit_time_and_queue_positions(tmp_path, store_dir):
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster) as dask_client:
            client = batchapi.client(store=str(store_dir), cluster=dask_client)
            api = client.deploy(_project(tmp_path, "gamma"))
            out = tmp_path / "out"
            first = api.submit(_items(30, 1, out, sleep=0.1))
            wait_for(lambda: first.status["job_status"]["status"] == "running", 30, "running")
            low = api.submit(_items(3, 1, out))
            high = api.submit(_items(3, 1, out, priority=5))
            high2 = api.submit(_items(3, 1, out, priority=5))

            def positions():
                docs = [j.status["job_status"] for j in (low, high, high2)]
                return [d["queue_position"] for d in docs if d["status"] == "pending"]

            assert wait_for(lambda: positions() == [3, 1, 2], 20, "queue positions")
            listing = run_cli("get", "gamma")
            assert listing.returncode == 0, listing.stderr
            rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
            assert rows[low.job_id][1] == "pending" and "3" in rows[low.job_id]
            assert "1/1" in rows[first.job_id]  # held/asked
            assert [j.wait(timeout=60) for j in (first, low, high, high2)] == ["succeeded"] * 4
            starts = [min(p["start"] for p in _outputs(out, j.job_id)) for j in (high, high2, low)]
            assert starts == sorted(starts)  # priority first, then submit time


def test_priority_must_be_an_integer():
    items = {"item_list": {"items": [1], "batch_size": 1}}
    assert parse_submission({**items, "priority": -3}).priority == -3
    with pytest.raises(SubmissionError, match=r"^priority must be an integer .*got 'high'$"):
        parse_submission({**items, "priority": "high"})


def test_a_sigkilled_driver_frees_its_worker_and_the_queued_job_starts(tmp_path, store_dir):
    result = run_cli("deploy", str(_project(tmp_path, "delta")))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        ids = []
        for name, n, sleep in (("a.json", 200, 0.1), ("b.json", 3, 0.01)):
            path = write_json(tmp_path / name, _items(n, 1, out, sleep=sleep))
            result = run_cli("submit", "delta", str(path), "--cluster", address)
            assert result.returncode == 0, result.stderr
            ids.append(result.stdout.split()[0])
        client = batchapi.client(store=str(store_dir))
        running, queued = (client.get_job("delta", i) for i in ids)
        wait_for(lambda: running.status["job_status"]["status"] == "running", 60, "running")
        wait_for(lambda: queued.status["job_status"]["queue_position"] == 1, 60, "queued")
        shown = json.loads(run_cli("cluster", "--cluster", address, "-o", "json").stdout)
        assert [w["job_id"] for w in shown["workers"]] == [ids[0]]
        os.kill(_driver_pid(store_dir, "delta", ids[0]), signal.SIGKILL)
        killed = time.time()
        wait_for(lambda: queued.status["job_status"]["status"] != "pending", 10, "queued job")
        assert time.time() - killed < 5
        assert queued.wait(timeout=30) == "succeeded"


def test_six_concurrent_cold_submits_start_exactly_one_cluster(tmp_path, store_dir):
    result = run_cli("deploy", str(_project(tmp_path, "epsilon")))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    path = write_json(tmp_path / "s.json", _items(20, 2, out, sleep=0.02))
    env = {**os.environ, "DASK_BATCHAPI__KEEP_ALIVE": "6", "DASK_BATCHAPI__LOCAL__MAX_WORKERS": "2"}
    cmd = [sys.executable, "-m", "dask_batchapi.api.cli", "submit", "epsilon", str(path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(6)]
    ids = [p.communicate(timeout=120)[0].split()[0] for p in procs]
    client = batchapi.client(store=str(store_dir))
    jobs = [client.get_job("epsilon", i) for i in ids]
    assert [j.wait(timeout=120) for j in jobs] == ["succeeded"] * 6
    drivers = {_driver_pid(store_dir, "epsilon", i) for i in ids}
    assert len(drivers) == 1  # one local runner drove them all
    shown = subprocess.run(
        [*cmd[:3], "cluster", "-o", "json"], capture_output=True, text=True, env=env, timeout=60
    )
    status = json.loads(shown.stdout)  # the runner is still up (keep-alive), its cluster idle
    assert [w["state"] for w in status["workers"]] == ["free", "free"], status
    runs = {j.job_id: _outputs(out, j.job_id) for j in jobs}
    assert len({p["pid"] for parts in runs.values() for p in parts}) <= 2
    _no_worker_served_two_jobs_at_once(runs)


def test_an_adaptive_cluster_from_zero_scales_up_for_a_queued_lease(tmp_path):
    """A queued job has no task to ask for workers with: its lease does."""
    with LocalCluster(n_workers=0, threads_per_worker=1, dashboard_address=":0") as cluster:
        cluster.adapt(minimum=0, maximum=2, interval="200ms")
        with Client(cluster) as dask_client:
            client = batchapi.client(store=str(tmp_path / "store"), cluster=dask_client)
            api = client.deploy(_project(tmp_path, "zeta"))
            job = api.submit(_items(6, 2, tmp_path / "out"))
            assert job.wait(timeout=60) == "succeeded"
            assert len({p["pid"] for p in _outputs(tmp_path / "out", job.job_id)}) >= 1
