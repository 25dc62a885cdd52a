"""The seed's in-handler client: ``import cortex`` in a handler, and jobs that trigger jobs.

A parent API's handler imports ``cortex`` at module level and, in ``on_job_complete``, submits
a job of another API through ``cortex.client()``. Both run on real clusters: the embedded one
(a runner per job, and a warm runner that takes the child itself), and an existing cluster of
real ``dask scheduler`` / ``dask worker`` processes (``--cluster tcp://…``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, wait_for, write_json, write_project
from distributed import Client

import dask_batchapi as batchapi
from dask_batchapi.api.widgets import status_html

PARENT = """
    import json, time

    import cortex  # at module level, as Cortex's docs do


    class Handler:
        def __init__(self, config, job_spec):
            self.config = config
            self.init_store = cortex.client().store.url  # __init__ is handler code too

        def handle_batch(self, payload):
            if self.config.get("started"):
                open(self.config["started"], "a").write("started\\n")
            time.sleep(self.config.get("sleep", 0))

        def on_job_complete(self):
            client = cortex.client()
            began = time.monotonic()
            job = client.submit(
                "child",
                {
                    "workers": 1,
                    "item_list": {"items": [1, 2, 3], "batch_size": 1},
                    "config": {"again": self.config.get("grandchild", False)},
                },
            )
            took = time.monotonic() - began
            with open(self.config["marker"], "w") as f:
                json.dump({"child": job.job_id, "took": took, "store": client.store.url,
                           "init_store": self.init_store, "cluster": str(client.cluster)}, f)
    """

CHILD = """
    import cortex


    class Handler:
        def __init__(self, config, job_spec):
            self.parent = job_spec["triggered_by"]
            self.again = config.get("again")

        def handle_batch(self, payload):
            return {"parent": self.parent, "payload": payload}

        def on_job_complete(self):
            if self.again:  # a grandchild: the same API, once
                items = {"items": [1], "batch_size": 1}
                cortex.client().submit("child", {"workers": 1, "item_list": items})
    """

FINAL = ("succeeded", "completed_with_failures", "worker_error", "timed_out", "stopped",
         "unexpected_error", "enqueue_failed", "worker_oom")  # fmt: skip


@pytest.fixture
def apis(tmp_path, store_dir) -> batchapi.BatchClient:
    client = batchapi.client(store=str(store_dir))
    client.deploy(write_project(tmp_path / "parent", PARENT, name="parent"))
    client.deploy(write_project(tmp_path / "child", CHILD, name="child"))
    return client


def _submission(tmp_path: Path, **config) -> dict:
    config.setdefault("marker", str(tmp_path / "marker.json"))
    return {"workers": 1, "item_list": {"items": [1, 2], "batch_size": 1}, "config": config}


def _final(client: batchapi.BatchClient, api: str, job_id: str, timeout: float = 90) -> dict:
    def ended():
        doc = client.get_job(api, job_id)["job_status"]
        return doc["status"] in FINAL and doc

    return wait_for(ended, timeout, f"{api} job {job_id} to end")


def _check_child(client: batchapi.BatchClient, parent_id: str, marker: Path) -> dict:
    """The follow-up succeeded, names its parent, and the parent lists it."""
    info = json.loads(marker.read_text())
    assert info["took"] < 5, "submit from handler code must return at once"
    child = _final(client, "child", info["child"])
    assert child["status"] == "succeeded", child.get("error")
    assert child["triggered_by"] == {"api_name": "parent", "job_id": parent_id}
    parent = client.get_job("parent", parent_id)["job_status"]
    assert parent["status"] == "succeeded"
    assert parent["triggered"] == [{"api_name": "child", "job_id": info["child"]}]
    assert parent["triggered_by"] is None
    return {"info": info, "child": child, "parent": parent}


def test_follow_up_job_on_the_embedded_cluster(apis, tmp_path, store_dir):
    job = apis.submit("parent", _submission(tmp_path))
    assert job.wait(timeout=90) == "succeeded"
    seen = _check_child(apis, job.job_id, tmp_path / "marker.json")
    # in handler code (and __init__), cortex.client() is the job's own store
    assert seen["info"]["store"] == seen["info"]["init_store"] == str(store_dir)
    # the CLI shows both ends of the link
    shown = run_cli("get", "child", seen["info"]["child"]).stdout
    assert f"triggered by: parent {job.job_id} (dask-batchapi get parent {job.job_id})" in shown
    assert (
        f"triggered: child {seen['info']['child']}" in run_cli("get", "parent", job.job_id).stdout
    )
    # the parent's widget links the child; the child's links its parent
    child_id = seen["info"]["child"]
    html = status_html(job.status)
    assert f'data-api="child" data-job="{child_id}"' in html and "triggered <code" in html
    html = status_html(apis.get_job("child", child_id).status)
    assert (
        f'triggered by <code class="batchapi-job-link" data-api="parent" data-job="{job.job_id}"'
        in html
    )


def test_follow_up_runs_on_the_parent_s_warm_runner_and_cluster(apis, tmp_path, store_dir):
    sub = write_json(tmp_path / "sub.json", _submission(tmp_path, grandchild=True))
    result = run_cli("submit", "parent", str(sub), "--wait", env={"DASK_BATCHAPI__KEEP_ALIVE": "3"})
    assert result.returncode == 0, result.stderr
    parent_id = result.stdout.split()[0]
    seen = _check_child(apis, parent_id, tmp_path / "marker.json")
    assert seen["info"]["cluster"].startswith("tcp://127.0.0.1:")  # the embedded scheduler
    parent_state = apis.store.read_state("parent", parent_id)
    child_state = apis.store.read_state("child", seen["info"]["child"])
    # handed to the runner that owns the parent's cluster: one driver process, one cluster
    assert child_state["driver"]["pid"] == parent_state["driver"]["pid"]
    assert child_state["dashboard_link"] == parent_state["dashboard_link"]
    # the child's own child goes there too
    [grandchild] = seen["child"]["triggered"]
    done = _final(apis, "child", grandchild["job_id"])
    assert done["status"] == "succeeded"
    assert done["triggered_by"] == {"api_name": "child", "job_id": seen["info"]["child"]}
    state = apis.store.read_state("child", grandchild["job_id"])
    assert state["driver"]["pid"] == parent_state["driver"]["pid"]


@pytest.fixture
def dask_cluster(tmp_path):
    """A real ``dask scheduler`` and ``dask worker --nworkers 2`` on loopback."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(tmp_path / "dask-tmp")}
    logs = (tmp_path / "scheduler.log").open("w"), (tmp_path / "worker.log").open("w")
    common = ["--scheduler-file", str(scheduler_file), "--no-dashboard"]
    scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", "--nworkers", "2"]
    scheduler += ["--port", "0", *common]
    procs = [subprocess.Popen(scheduler, stdout=logs[0], stderr=subprocess.STDOUT, env=env)]
    try:
        wait_for(scheduler_file.exists, 30, "the scheduler file")
        worker += ["--nthreads", "1", "--host", "127.0.0.1", *common]
        procs.append(subprocess.Popen(worker, stdout=logs[1], stderr=subprocess.STDOUT, env=env))
        address = json.loads(scheduler_file.read_text())["address"]
        with Client(address, timeout="20s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def test_follow_up_job_on_an_existing_cluster(apis, tmp_path, dask_cluster):
    sub = write_json(tmp_path / "sub.json", _submission(tmp_path))
    result = run_cli("submit", "parent", str(sub), "--cluster", dask_cluster, "--wait")
    assert result.returncode == 0, result.stderr
    parent_id = result.stdout.split()[0]
    seen = _check_child(apis, parent_id, tmp_path / "marker.json")
    assert seen["info"]["cluster"] == dask_cluster
    assert seen["child"]["cluster"] == dask_cluster  # the same cluster, by its address


def test_follow_up_of_a_job_driven_with_the_caller_s_client(tmp_path, store_dir):
    """A notebook's own Client: the child goes to that client's scheduler, by address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster) as dask_client:
            client = batchapi.client(store=str(store_dir), cluster=dask_client)
            client.deploy(write_project(tmp_path / "parent", PARENT, name="parent"))
            client.deploy(write_project(tmp_path / "child", CHILD, name="child"))
            job = client.submit("parent", _submission(tmp_path))
            assert job.wait(timeout=90) == "succeeded"
            seen = _check_child(client, job.job_id, tmp_path / "marker.json")
            assert seen["child"]["cluster"] == cluster.scheduler_address


def test_a_parent_stopped_before_its_hook_never_submits(apis, tmp_path):
    """The stop is requested while the last batch runs, between two checkpoints (5 s apart):
    the driver looks for it once more before the hook."""
    started = tmp_path / "started"
    sub = write_json(tmp_path / "sub.json", _submission(tmp_path, sleep=3, started=str(started)))
    sub_doc = json.loads(sub.read_text())
    sub_doc["item_list"]["items"] = [1]
    write_json(sub, sub_doc)
    result = run_cli("submit", "parent", str(sub), env={"DASK_BATCHAPI__CHECKPOINT_INTERVAL": "5"})
    assert result.returncode == 0, result.stderr
    parent_id = result.stdout.split()[0]
    wait_for(started.exists, 60, "the batch to start")
    apis.stop_job("parent", parent_id)
    assert _final(apis, "parent", parent_id)["status"] == "stopped"
    assert not (tmp_path / "marker.json").exists()  # the hook never ran
    assert apis.list_jobs("child") == []


def test_a_parent_that_times_out_before_its_hook_never_submits(apis, tmp_path):
    job = apis.submit("parent", {**_submission(tmp_path, sleep=4), "timeout": 2})
    assert job.wait(timeout=90) == "timed_out"
    assert not (tmp_path / "marker.json").exists()
    assert apis.list_jobs("child") == []
    assert job["job_status"]["triggered"] == []


def test_unknown_environment_is_one_clear_error_and_no_directory(tmp_path, monkeypatch):
    import cortex

    monkeypatch.chdir(tmp_path)
    with pytest.raises(batchapi.EnvironmentNotFound) as error:
        cortex.client("unknown")
    message = str(error.value)
    assert "\n" not in message
    assert "no environment named 'unknown'" in message
    assert "batchapi.environments.unknown" in message
    with pytest.raises(batchapi.EnvironmentNotFound):
        batchapi.client("aws")
    assert list(tmp_path.iterdir()) == []  # never a store directory named after it


def test_named_environments_from_dask_config(tmp_path, monkeypatch):
    import dask

    import cortex

    monkeypatch.chdir(tmp_path)
    envs = {"lab": {"store": str(tmp_path / "lab-store"), "cluster": "tcp://10.0.0.1:8786"}}
    with dask.config.set({"batchapi.environments": envs}):
        cx = cortex.client("lab")
        assert isinstance(cx, batchapi.BatchClient) and isinstance(cx, cortex.Client)
        assert (cx.store.url, cx.cluster) == (str(tmp_path / "lab-store"), "tcp://10.0.0.1:8786")
        # explicit arguments win over the environment's
        assert batchapi.client("lab", cluster="local").cluster == "local"
    bad = {"lab": {"store": "x", "scheduler": "tcp://h:1"}}
    with dask.config.set({"batchapi.environments": bad}):
        with pytest.raises(batchapi.ConfigError, match="unknown key 'scheduler'"):
            cortex.client("lab")
    # outside a job and with no name: the default store and cluster
    monkeypatch.setenv("DASK_BATCHAPI_STORE", str(tmp_path / "default-store"))
    assert cortex.client().store.url == str(tmp_path / "default-store")
