"""End to end: deploy a project, run item_list jobs on a real embedded LocalCluster."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLES, write_project

import dask_batchapi as batchapi

COUNTING_HANDLER = """
    import json, os
    from dask_batchapi import logger

    class Handler:
        def __init__(self, config, job_spec):
            self.config = config
            self.job_spec = job_spec
            self.seen = []
            with open("values.json") as f:
                self.values = json.load(f)

        def handle_batch(self, payload, batch_id):
            self.seen.append(batch_id)
            logger.info("batch done", extra={"n": len(payload)})
            print("printed from", batch_id)
            return {"batch_id": batch_id, "payload": payload, "scale": self.config["scale"],
                    "env": os.environ.get("SECRET_TOKEN") is not None}

        def on_job_complete(self):
            with open(self.config["marker"], "a") as f:
                f.write(json.dumps({"batches": len(self.seen), "job_id": self.job_spec["job_id"],
                                    "total": self.job_spec["total_batch_count"]}) + "\\n")
"""


@pytest.fixture
def counting_api(tmp_path, store_dir):
    project = write_project(
        tmp_path / "proj",
        COUNTING_HANDLER,
        spec="""
            name: counting
            kind: BatchAPI
            handler:
              type: python
              path: handler.py
              config: {scale: 1, nested: {a: 1, b: 2}}
            """,
        files={"values.json": "[1, 2, 3]", ".env": "SECRET_TOKEN=s3cr3t-value\n"},
    )
    return batchapi.deploy(project)


def test_item_list_job_succeeds_with_metrics_logs_and_outputs(counting_api, tmp_path):
    marker = tmp_path / "complete.jsonl"
    out = tmp_path / "out"
    job = counting_api.submit(
        {
            "workers": 1,
            "item_list": {"items": list(range(23)), "batch_size": 5},
            "config": {"marker": str(marker), "scale": 3},
            "output": str(out),
        }
    )
    assert job.wait(timeout=90) == "succeeded"
    status = job.status["job_status"]
    assert status["total_batch_count"] == 5
    assert status["batch_metrics"]["succeeded"] == 5
    assert status["batch_metrics"]["failed"] == 0
    assert status["batches_in_queue"] == 0
    assert status["end_time"] and status["start_time"]
    # on_job_complete ran exactly once, on the instance that handled every batch (1 worker)
    lines = marker.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {"batches": 5, "job_id": job.job_id, "total": 5}
    # outputs: one part per batch, config merged (job wins), .env exported
    parts = sorted((out / job.job_id).iterdir())
    assert [p.name for p in parts] == [f"part-{i:06d}.jsonl" for i in range(5)]
    values = [json.loads(p.read_text()) for p in parts]
    assert sorted(x for v in values for x in v["payload"]) == list(range(23))
    assert all(v["scale"] == 3 and v["env"] is True for v in values)
    # logs: handler logger lines (with batch ids) and prints reached the store
    logs = job.logs()
    handler_lines = [line for line in logs if line.get("message") == "batch done"]
    assert len(handler_lines) == 5
    assert all(line["job_id"] == job.job_id and line["batch_id"] for line in handler_lines)
    assert any("printed from" in line.get("message", "") for line in logs)
    # secrets from .env never appear in the status document or the logs
    assert "s3cr3t-value" not in json.dumps(job.status)
    assert "s3cr3t-value" not in json.dumps(logs)


def test_failing_batches_go_to_dead_letter(tmp_path, store_dir):
    project = write_project(
        tmp_path / "p",
        """
        class Handler:
            def handle_batch(self, payload):
                if 13 in payload:
                    raise ValueError("unlucky 13")
        """,
        name="flaky",
    )
    api = batchapi.deploy(project)
    job = api.submit(
        {
            "workers": 2,
            "item_list": {"items": list(range(40)), "batch_size": 4},
            "dead_letter": {"max_receive_count": 2},
        }
    )
    assert job.wait(timeout=90) == "completed_with_failures"
    metrics = job.metrics
    assert metrics["succeeded"] == 9
    assert metrics["failed"] == 2  # two attempts of the one bad batch
    assert metrics["dead_lettered"] == 1
    [record] = job.dead_letter()
    assert record["payload"] == [12, 13, 14, 15]
    assert record["attempts"] == 2
    assert "ValueError: unlucky 13" in record["error"]
    assert "Traceback" in record["traceback"]
    # it starts at the handler's own frame: no frame of the framework above it
    assert "dask_batchapi" not in record["traceback"] and "handle_batch" in record["traceback"]


def test_init_error_ends_job_with_worker_error(tmp_path, store_dir):
    project = write_project(
        tmp_path / "p",
        """
        class Handler:
            def __init__(self, config):
                raise RuntimeError("model file is corrupt")
            def handle_batch(self, payload):
                pass
        """,
        name="broken",
    )
    job = batchapi.deploy(project).submit({"item_list": {"items": [1, 2, 3], "batch_size": 1}})
    assert job.wait(timeout=60) == "worker_error"
    error = job.status["job_status"]["error"]
    assert "model file is corrupt" in error["message"]
    assert error["reason"] == "Handler.__init__"


def test_example_project_runs(tmp_path, store_dir):
    api = batchapi.deploy(EXAMPLES / "word-count")
    submission = json.loads((EXAMPLES / "word-count" / "submission.json").read_text())
    submission["output"] = str(tmp_path / "out")
    job = api.submit(submission)
    assert job.wait(timeout=90) == "succeeded"
    assert job.metrics["succeeded"] == 10
    assert any(line.get("message") == "job done: top words" for line in job.logs())


def test_retry_runs_only_dead_lettered_batches(tmp_path, store_dir):
    flag = tmp_path / "fixed"
    project = write_project(
        tmp_path / "p",
        f"""
        import os
        class Handler:
            def handle_batch(self, payload):
                if 7 in payload and not os.path.exists({str(flag)!r}):
                    raise ValueError("seven")
                return payload
        """,
        name="retryable",
    )
    api = batchapi.deploy(project)
    job = api.submit(
        {"item_list": {"items": list(range(10)), "batch_size": 3}, "output": str(tmp_path / "out")}
    )
    assert job.wait(timeout=60) == "completed_with_failures"
    flag.write_text("now it works")
    retry = job.retry()
    assert retry.wait(timeout=60) == "succeeded"
    status = retry.status["job_status"]
    assert status["retry_of"] == job.job_id
    assert status["total_batch_count"] == 1
    [part] = (tmp_path / "out" / retry.job_id).iterdir()
    assert part.read_text().split() == ["6", "7", "8"]
