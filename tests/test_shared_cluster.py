"""Jobs on a cluster the user already has (a live Client): sharing, isolation, cleanup."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import write_project
from distributed import Client, LocalCluster

import dask_batchapi as batchapi

HANDLER = """
    import os, time
    import util

    class Handler:
        def __init__(self, config):
            self.config = config
        def handle_batch(self, payload, batch_id):
            time.sleep(0.02)
            return {"who": util.WHO, "pid": os.getpid(), "payload": payload}
    """


@pytest.fixture(scope="module")
def shared_client():
    with LocalCluster(n_workers=3, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


def _project(tmp_path, name: str):
    return write_project(
        tmp_path / name, HANDLER, name=name, files={"util.py": f"WHO = {name!r}\n"}
    )


def _parts(out, job_id) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / job_id).iterdir())]


def test_two_apis_run_at_once_without_colliding(shared_client, tmp_path):
    client = batchapi.client(store=str(tmp_path / "store"), cluster=shared_client)
    apis = [client.deploy(_project(tmp_path, name)) for name in ("alpha", "beta")]
    out = tmp_path / "out"
    jobs = [
        api.submit(
            {
                "workers": 3,
                "item_list": {"items": list(range(60)), "batch_size": 2},
                "output": str(out),
            }
        )
        for api in apis
    ]
    assert [job.wait(timeout=120) for job in jobs] == ["succeeded", "succeeded"]
    for api, job in zip(apis, jobs, strict=True):
        parts = _parts(out, job.job_id)
        assert len(parts) == 30
        assert {p["who"] for p in parts} == {api.name}  # each job saw its own util.py


def test_job_uses_at_most_its_workers_and_leaves_nothing(shared_client, tmp_path):
    client = batchapi.client(store=str(tmp_path / "store"), cluster=shared_client)
    api = client.deploy(_project(tmp_path, "gamma"))
    out = tmp_path / "out"
    job = api.submit(
        {"workers": 1, "item_list": {"items": list(range(40)), "batch_size": 1}, "output": str(out)}
    )
    assert job.wait(timeout=120) == "succeeded"
    assert len({p["pid"] for p in _parts(out, job.job_id)}) == 1  # one of the three workers

    def leftovers(dask_worker):
        root = os.path.join(dask_worker.local_directory, "batchapi")
        return {
            "plugins": [n for n in dask_worker.plugins if n.startswith("batchapi-")],
            "modules": [m for m in sys.modules if m.startswith("batchapi_handler_")],
            "paths": [p for p in sys.path if os.sep + "batchapi" + os.sep in p],
            "files": os.listdir(root) if os.path.isdir(root) else [],
        }

    for address, left in shared_client.run(leftovers).items():
        assert left == {"plugins": [], "modules": [], "paths": [], "files": []}, address
