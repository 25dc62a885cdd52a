"""Compute resources on real clusters: ``compute.gpu`` -> the Dask resource ``GPU``.

Real LocalClusters (the embedded backend, with ``batchapi.local.resources``) and a real
``dask worker`` subprocess that declares ``--resources GPU=1``: GPU tasks run only there, and a
cluster without such a worker is named in one line instead of a job that waits forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import dask.config
import pytest
from conftest import write_project
from distributed import LocalCluster, get_worker

import dask_batchapi as batchapi
from dask_batchapi.cluster import backend_for
from dask_batchapi.cluster.backends import (
    LocalBackend,
    check_address,
    eligible_workers,
    format_resources,
    missing_resources,
    parse_resources,
    task_resources,
)
from dask_batchapi.errors import ClusterError

pytestmark = pytest.mark.timeout(90)


def where() -> str:
    return get_worker().address


# -- pure helpers -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "compute, expected",
    [
        (None, None),
        ({}, None),
        ({"cpu": 4.0, "mem": 2**30, "gpu": 0}, None),  # cpu and mem size workers, not tasks
        ({"cpu": 1.0, "gpu": 2}, {"GPU": 2}),
    ],
)
def test_task_resources(compute, expected):
    assert task_resources(compute) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, {}),
        ("", {}),
        ("GPU=1", {"GPU": 1}),
        ("GPU=2 MEM=10e9", {"GPU": 2, "MEM": 10e9}),
        ("GPU=1,FOO=0.5", {"GPU": 1, "FOO": 0.5}),
        ({"GPU": 1}, {"GPU": 1}),
    ],
)
def test_parse_resources(value, expected):
    assert parse_resources(value) == expected


@pytest.mark.parametrize("value", ["GPU", "GPU=one", "=1", {"GPU": -1}, ["GPU=1"]])
def test_parse_resources_rejects_nonsense_in_one_line(value):
    with pytest.raises(ClusterError, match=r"batchapi.local.resources must") as err:
        parse_resources(value, "batchapi.local.resources")
    assert "\n" not in str(err.value)


def test_eligible_workers_compare_amounts():
    workers = {
        "tcp://a:1": {"resources": {"GPU": 2}},
        "tcp://b:1": {"resources": {"GPU": 1}},
        "tcp://c:1": {"resources": {}},
        "tcp://d:1": {},
    }
    assert eligible_workers(workers, {"GPU": 1}) == ["tcp://a:1", "tcp://b:1"]
    assert eligible_workers(workers, {"GPU": 2}) == ["tcp://a:1"]
    assert eligible_workers(workers, None) == sorted(workers)
    assert format_resources({"GPU": 1, "MEM": 1e9}) == "GPU=1 MEM=1e+09"


def test_backend_for_names_every_target():
    assert type(backend_for("local")).__name__ == "LocalBackend"
    assert type(backend_for("tcp://h:8786")).__name__ == "AddressBackend"
    assert type(backend_for("tls://h:8786")).__name__ == "AddressBackend"
    assert type(backend_for("kubernetes")).__name__ == "KubernetesBackend"
    with pytest.raises(ClusterError, match="unknown cluster 'nowhere'"):
        backend_for("nowhere")


# -- the embedded cluster -----------------------------------------------------------------------
def test_embedded_cluster_gives_each_worker_the_configured_resources_and_memory():
    compute = {"cpu": 2.0, "gpu": 1, "mem": 512 * 2**20}
    with dask.config.set({"batchapi.local.resources": "GPU=1"}):
        backend = LocalBackend(2, compute)
        started = backend.start()  # the runner starts it first, then uses it as a context
        with backend as client:
            assert client is started
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert len(workers) == 2  # exactly `workers` processes
            assert {w["resources"]["GPU"] for w in workers.values()} == {1}
            assert {w["memory_limit"] for w in workers.values()} == {512 * 2**20}
            assert {w["nthreads"] for w in workers.values()} == {1}  # cpu does not add threads
            assert missing_resources(client, task_resources(compute)) is None
            future = client.submit(where, resources=task_resources(compute), pure=False)
            assert future.result(timeout=20) in workers
        assert backend.client is None and backend.cluster is None  # closed


def test_no_workers_yet_is_not_missing_and_the_submit_check_handshakes():
    """An adaptive cluster scaling up from zero: wait for workers, as Dask does."""
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        with cluster.get_client() as client:
            assert missing_resources(client, {"GPU": 1}) is None
        check_address(cluster.scheduler_address)  # a real Dask handshake: no error
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(ClusterError, match=f"cannot reach the scheduler at {closed}: ") as err:
        check_address(closed, timeout=1)
    assert "\n" not in str(err.value)
    with pytest.raises(ClusterError, match="distributed.comm.tls.ca-file"):
        check_address("tls://127.0.0.1:1")  # no TLS settings: said before any connection


def test_gpu_tasks_run_only_on_gpu_workers(tmp_path):
    """An embedded cluster of one plain worker: no GPU, said in one line. Then a
    `dask worker --resources GPU=1` process joins: GPU tasks run there and only there."""
    with LocalBackend(1, {"gpu": 1}) as client:
        message = missing_resources(client, task_resources({"gpu": 1}))
        assert message is not None and "\n" not in message
        assert "no worker of the cluster has the resources GPU=1" in message
        assert "declare no resources" in message
        assert "--resources" in message and "batchapi.local.resources" in message

        with gpu_worker(client, tmp_path):
            workers = client.scheduler_info(n_workers=-1)["workers"]
            gpu = eligible_workers(workers, {"GPU": 1})
            assert len(workers) == 2 and len(gpu) == 1
            assert missing_resources(client, task_resources({"gpu": 1})) is None
            resources = task_resources({"gpu": 1})
            futures = [client.submit(where, resources=resources, pure=False) for _ in range(8)]
            assert set(client.gather(futures)) == set(gpu)
            message = missing_resources(client, {"GPU": 2})
            assert message and "GPU=2" in message and "declare GPU=1" in message


@contextlib.contextmanager
def gpu_worker(client, tmp_path):
    """A real `dask worker --resources GPU=1` process joined to the client's cluster."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            client.scheduler_info()["address"],
            "--nthreads",
            "1",
            "--resources",
            "GPU=1",
            "--no-dashboard",
            "--local-directory",
            str(tmp_path),
        ],  # fmt: skip
        env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)},  # for `where`
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while len(client.scheduler_info(n_workers=-1)["workers"]) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "GPU worker did not join"
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# -- whole jobs on the embedded cluster (the driver calls missing_resources at start) -----------
GPU_HANDLER = """
    from distributed import get_worker

    class Handler:
        def handle_batch(self, payload):
            return {"items": payload, "resources": get_worker().state.total_resources}
"""
GPU_SPEC = """
    - name: gpu-api
      kind: BatchAPI
      handler: {type: python, path: handler.py}
      compute: {cpu: 1, gpu: 1, mem: 1Gi}
"""


@pytest.fixture(scope="module")
def gpu_api(tmp_path_factory):
    """The GPU API deployed once; its jobs run in detached drivers with embedded clusters."""
    tmp = tmp_path_factory.mktemp("gpu-api")
    client = batchapi.client(store=str(tmp / "store"))
    client.deploy(write_project(tmp / "proj", GPU_HANDLER, GPU_SPEC))
    # a loaded machine can take > 10 s to start a LocalCluster, during which a driver without
    # the runner's start-up heartbeat looks dead to this reader
    with dask.config.set({"batchapi.heartbeat-timeout": 60.0}):
        yield client


def test_gpu_job_runs_on_an_embedded_cluster_that_declares_gpus(gpu_api, tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_BATCHAPI__LOCAL__RESOURCES", "GPU=1")  # for the detached driver
    out = tmp_path / "out"
    submission = {"workers": 1, "item_list": {"items": list(range(4)), "batch_size": 2},
                  "output": str(out)}  # fmt: skip
    job = gpu_api.submit("gpu-api", submission, cluster="local")
    assert job.wait(timeout=60) == "succeeded", job.status["job_status"]["error"]
    values = [json.loads(p.read_text()) for p in (out / job.job_id).iterdir()]
    assert len(values) == 2 and all(v["resources"] == {"GPU": 1} for v in values)


def test_gpu_job_without_gpu_workers_ends_at_once_with_a_clear_error(gpu_api):
    started = time.monotonic()
    job = gpu_api.submit("gpu-api", {"item_list": {"items": [1, 2], "batch_size": 1}})
    status = job.wait(timeout=60)
    assert time.monotonic() - started < 30, "a job that cannot run must not wait"
    assert status not in ("succeeded", "completed_with_failures")
    error = job.status["job_status"]["error"]
    assert "no worker of the cluster has the resources GPU=1" in error["message"]
    assert job.status["job_status"]["batch_metrics"]["succeeded"] == 0


def test_local_backend_takes_its_settings_as_arguments():
    """dask-jobqueue's pattern: arguments first, dask config ``batchapi.local`` otherwise."""
    backend = LocalBackend(1, local={"memory-limit": "300MiB", "dashboard-address": None})
    with backend as client:
        (info,) = client.scheduler_info(n_workers=-1)["workers"].values()
        assert info["memory_limit"] == 300 * 2**20
        assert info["host"] == "127.0.0.1"  # loopback unless opened explicitly
    assert backend.worker_profile is False  # batchapi.worker-profile's default
