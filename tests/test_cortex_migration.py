"""Cortex projects move over unchanged: metrics_client, spec files, and clear refusals."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
from conftest import run_cli, write_project
from distributed import Client, LocalCluster

import dask_batchapi as batchapi
from dask_batchapi.errors import SpecError
from dask_batchapi.spec.api_spec import load_api_specs, parse_api_specs
from dask_batchapi.worker.metrics import MetricsClient, merge_metrics

# -- metrics_client ------------------------------------------------------------------------------

METRICS_HANDLER = """
    import os, time

    class Handler:
        def __init__(self, config, job_spec, metrics_client):
            self.metrics = metrics_client
            self.metrics.increment("handlers")

        def handle_batch(self, payload, batch_id):
            time.sleep(0.2)  # long enough that the second leased worker joins under load
            for x in payload:
                self.metrics.increment(metric="items", value=1, tags={"model": "v1"})
                self.metrics.histogram(metric="size", value=x, tags={"model": "v1"})
            self.metrics.gauge(metric="last", value=payload[-1])
            self.metrics.increment("bad", value="one")  # never raises into the handler
            self.metrics.gauge(None, 1)
            self.metrics.histogram("nan", float("nan"), tags="model:v1")
            return {"pid": os.getpid()}
    """


@pytest.fixture(scope="module")
def two_workers():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


def test_metrics_client_aggregates_across_two_workers(two_workers, tmp_path):
    store = str(tmp_path / "store")
    client = batchapi.client(store=store, cluster=two_workers)
    api = client.deploy(write_project(tmp_path / "m", METRICS_HANDLER, name="metrics-api"))
    out = tmp_path / "out"
    items = list(range(40))
    job = api.submit(
        {"workers": 2, "item_list": {"items": items, "batch_size": 2}, "output": str(out)}
    )
    assert job.wait(timeout=120) == "succeeded"
    pids = {json.loads(p.read_text())["pid"] for p in (out / job.job_id).iterdir()}
    assert len(pids) == 2  # both workers handled batches

    metrics = {m["name"]: m for m in job.status["job_status"]["custom_metrics"]}
    assert set(metrics) == {"handlers", "items", "size", "last"}  # the bad calls were dropped
    assert metrics["handlers"] == {"name": "handlers", "type": "counter", "tags": {}, "value": 2}
    assert metrics["items"] == {
        "name": "items",
        "type": "counter",
        "tags": {"model": "v1"},
        "value": 40,
    }
    assert metrics["size"] == {
        "name": "size",
        "type": "histogram",
        "tags": {"model": "v1"},
        "count": 40,
        "sum": sum(items),
        "min": 0,
        "max": 39,
    }
    assert metrics["last"]["type"] == "gauge" and metrics["last"]["value"] in items[1::2]

    messages = [line.get("message", "") for line in client.logs(api.name, job.job_id)]
    assert any(
        m.startswith("metrics_client.increment('bad') dropped: value must be") for m in messages
    )
    assert any(
        m.startswith("metrics_client.gauge(None) dropped: the metric name") for m in messages
    )

    shown = run_cli("get", api.name, job.job_id, "--store", store)
    assert shown.returncode == 0, shown.stderr
    assert "custom metrics:" in shown.stdout
    assert any(
        line.split()[:4] == ["items", "counter", "model:v1", "40"]
        for line in shown.stdout.splitlines()
    )
    assert "count=40 sum=780 min=0 max=39" in shown.stdout


def test_metrics_client_never_raises_and_aggregates():
    metrics = MetricsClient(max_series=3)
    for call in (
        lambda: metrics.increment("a", 2),
        lambda: metrics.increment("a"),
        lambda: metrics.gauge("g", 1.5, tags={"k": 1}),
        lambda: metrics.histogram("h", 3),
        lambda: metrics.histogram("h", -1),
        lambda: metrics.increment("over-the-limit"),
        lambda: metrics.increment("", 1),
        lambda: metrics.gauge("g", math.inf),
        lambda: metrics.histogram("h", True),
        lambda: metrics.increment("a", tags=["not", "a", "dict"]),
    ):
        assert call() is None
    drained = {m["name"]: m for m in metrics.drain()}
    assert drained["a"]["value"] == 3
    assert drained["g"]["value"] == 1.5 and drained["g"]["tags"] == {"k": "1"}
    assert {k: drained["h"][k] for k in ("count", "sum", "min", "max")} == {
        "count": 2,
        "sum": 2,
        "min": -1,
        "max": 3,
    }
    assert "over-the-limit" not in drained and metrics.drain() == []


def test_merge_metrics_sums_keeps_last_gauge_and_extremes():
    one = [
        {"name": "n", "type": "counter", "tags": {}, "value": 2},
        {"name": "g", "type": "gauge", "tags": {}, "value": 1, "time": 20.0},
        {"name": "h", "type": "histogram", "tags": {}, "count": 1, "sum": 5, "min": 5, "max": 5},
    ]
    two = [
        {"name": "n", "type": "counter", "tags": {}, "value": 3},
        {"name": "g", "type": "gauge", "tags": {}, "value": 9, "time": 10.0},  # older: loses
        {"name": "h", "type": "histogram", "tags": {}, "count": 2, "sum": 1, "min": 0, "max": 1},
        {"name": "n", "type": "counter", "tags": {"x": "y"}, "value": 1},  # another series
    ]
    merged = {(m["name"], tuple(m["tags"].items())): m for m in merge_metrics(one, two)}
    assert merged[("n", ())]["value"] == 5 and merged[("n", (("x", "y"),))]["value"] == 1
    assert merged[("g", ())]["value"] == 1
    assert merged[("h", ())] == {**one[2], "count": 3, "sum": 6, "min": 0, "max": 5}
    assert len(merge_metrics(one, two, max_series=3)) == 3


# -- spec files ----------------------------------------------------------------------------------

CORTEX_SPEC = """
- name: image-classifier
  kind: BatchAPI
  handler:
    type: python
    path: handler.py
  compute:
    cpu: 1
"""


def test_deploy_takes_a_spec_file_path(tmp_path, store_dir):
    project = tmp_path / "cortex-project"
    write_project(project, "class Handler:\n    def handle_batch(self, payload): pass\n")
    (project / "batchapi.yaml").unlink()
    (project / "cortex_cpu.yaml").write_text(CORTEX_SPEC)
    (project / "cortex_gpu.yaml").write_text(CORTEX_SPEC.replace("cpu: 1", "gpu: 1"))

    result = run_cli("deploy", str(project))  # a folder of several spec files: which one?
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(
        f"no batchapi.yaml or cortex.yaml in {project}; to deploy another spec file, give its"
        f" path: deploy {project / 'cortex_cpu.yaml'}"
    )
    result = run_cli("deploy", str(project / "cortex_cpu.yaml"))
    assert result.returncode == 0, result.stderr
    api = batchapi.client(store=str(store_dir)).get_api("image-classifier")
    assert api.record["project_dir"] == str(project.resolve())
    assert "cortex_cpu.yaml" not in api.record["files"] and "handler.py" in api.record["files"]
    assert api.record["spec"]["spec_file"] == "cortex_cpu.yaml"


def _refusal(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_api_specs(textwrap.dedent(text), "cortex.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_container_spec_is_refused_with_what_to_write_instead():
    message = _refusal(
        """
        - name: image-classifier
          kind: BatchAPI
          pod:
            containers:
            - name: api
              image: quay.io/cortexlabs-test/batch-image-classifier-alexnet-cpu:0.41.0
              command: ["uvicorn", "--workers", "1", "main:app"]
        """
    )
    assert message == (
        "cortex.yaml: pod: container-based Batch APIs (Cortex >= 0.36) are not supported; write"
        " the container's batch logic as a Python Handler class and declare it with handler:"
        " {type: python, path: handler.py} instead of pod: (see docs/migrating-from-cortex.md)"
    )


def test_tensorflow_handler_names_handler_type_first():
    message = _refusal(
        """
        - name: iris
          kind: BatchAPI
          handler:
            type: tensorflow
            path: handler.py
            models:
              path: s3://cortex-examples/tensorflow/iris-classifier/nn/
        """
    )
    assert message.startswith(
        "cortex.yaml: handler.type 'tensorflow' is not supported, use type: python"
    )


def test_compute_inf_is_an_error_not_dropped():
    message = _refusal("name: x\nhandler: {path: handler.py}\ncompute: {cpu: 1, inf: 1}\n")
    assert message == (
        "cortex.yaml: compute.inf 1 is not supported (AWS Inferentia chips); remove compute.inf,"
        " or use compute.gpu for an accelerator"
    )
    spec = parse_api_specs("name: x\nhandler: {path: handler.py}\ncompute: {inf: 0}\n")[0]
    assert spec.compute.inf == 0  # zero asks for nothing: accepted


def test_refusals_on_the_cli_are_one_line(tmp_path, store_dir):
    project = write_project(
        tmp_path / "p",
        "class Handler:\n    def handle_batch(self): pass\n",
        spec="name: x\nhandler: {path: handler.py}\ncompute: {inf: 2}\n",
    )
    result = run_cli("deploy", str(project / "batchapi.yaml"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "compute.inf 2" in result.stderr


def test_handler_check_accepts_metrics_client(tmp_path):
    project = write_project(
        tmp_path / "p",
        "class Handler:\n    def __init__(self, config, job_spec, metrics_client): pass\n"
        "    def handle_batch(self, payload, batch_id): pass\n",
    )
    client = batchapi.client(store=str(tmp_path / "store"))
    api = client.deploy(project)
    assert api.record["signature"]["init_args"] == ["config", "job_spec", "metrics_client"]
    assert load_api_specs(project / "batchapi.yaml")[0].name == "test-api"
