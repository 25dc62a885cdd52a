"""Jobs whose inputs, outputs and store live on a real S3 server (moto's, on loopback)."""

from __future__ import annotations

import json

import pytest
import s3fs
from conftest import run_cli, write_json, write_project
from s3_fixtures import put_objects

import dask_batchapi as batchapi

ECHO_HANDLER = """
    class Handler:
        def handle_batch(self, payload, batch_id):
            return {"n": len(payload), "payload": payload}
    """


@pytest.fixture
def echo_api(tmp_path, store_dir):
    return batchapi.deploy(write_project(tmp_path / "echo", ECHO_HANDLER, name="echo"))


def _parts(bucket: str, job_id: str) -> list[dict]:
    fs = s3fs.S3FileSystem()
    paths = sorted(fs.ls(f"{bucket}/out/{job_id}", refresh=True))
    return [json.loads(fs.cat_file(p)) for p in paths]


def test_delimited_files_cut_across_files_exactly_once(echo_api, s3_bucket):
    put_objects(
        s3_bucket,
        {
            "data/a.jsonl": '{"i": 0}\n{"i": 1} {"i": 2}\n\n',  # several values on one line
            "data/b.jsonl": '{"i": 3,\n "deep": [1,\n 2]}\n{"i": 4}\n',  # a value over lines
            "data/c.jsonl": "",  # empty file
            "data/d.json": '{"i": 5}{"i": 6}{"i": 7}\n{"i": 8}',
            "other/x.jsonl": '{"i": 99}\n',
        },
    )
    job = echo_api.submit(
        {
            "workers": 2,
            "delimited_files": {"s3_paths": [f"s3://{s3_bucket}/data/"], "batch_size": 4},
            "output": f"s3://{s3_bucket}/out",
        }
    )
    assert job.wait(timeout=90) == "succeeded"
    parts = _parts(s3_bucket, job.job_id)
    assert [p["n"] for p in parts] == [4, 4, 1]
    assert [v["i"] for p in parts for v in p["payload"]] == list(range(9))
    assert job.status["job_status"]["total_batch_count"] == 3


def test_file_path_lister_with_prefix_and_globs(echo_api, s3_bucket):
    put_objects(
        s3_bucket,
        {
            "images/img_1.png": "x",
            "images/img_2.jpg": "x",
            "images/img/3.jpg": "x",
            "images/other.jpg": "x",
            "images/dir/": "",
        },
    )
    job = echo_api.submit(
        {
            "file_path_lister": {
                "s3_paths": [f"s3://{s3_bucket}/images/img"],
                "includes": ["**.jpg", "**.png"],
                "excludes": ["**/img_2.jpg"],
                "batch_size": 1,
            },
            "output": f"s3://{s3_bucket}/out",
        }
    )
    assert job.wait(timeout=90) == "succeeded"
    files = [p["payload"][0] for p in _parts(s3_bucket, job.job_id)]
    assert files == [f"s3://{s3_bucket}/images/img/3.jpg", f"s3://{s3_bucket}/images/img_1.png"]


def test_bad_json_fails_only_its_batch(echo_api, s3_bucket):
    put_objects(
        s3_bucket,
        {
            "d/1.jsonl": "".join(json.dumps({"i": i}) + "\n" for i in range(10)),
            "d/2.jsonl": '{"i": 10}\n{"i": oops}\n{"i": 12}\n',
        },
    )
    job = echo_api.submit(
        {
            "delimited_files": {"s3_paths": [f"s3://{s3_bucket}/d/"], "batch_size": 5},
            "output": f"s3://{s3_bucket}/out",
        }
    )
    assert job.wait(timeout=90) == "completed_with_failures"
    [record] = job.dead_letter()
    assert f"s3://{s3_bucket}/d/2.jsonl" in record["error"]
    assert "line 2" in record["error"]
    assert sum(p["n"] for p in _parts(s3_bucket, job.job_id)) == 10


def test_dry_run_lists_matches_and_missing_bucket_fails_at_submit(echo_api, s3_bucket, tmp_path):
    put_objects(s3_bucket, {"in/a.jsonl": "1\n", "in/b.jsonl": "2\n"})
    sub = write_json(
        tmp_path / "s.json",
        {"delimited_files": {"s3_paths": [f"s3://{s3_bucket}/in/"], "batch_size": 1}},
    )
    result = run_cli("submit", "echo", str(sub), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"s3://{s3_bucket}/in/a.jsonl",
        f"s3://{s3_bucket}/in/b.jsonl",
        "validations passed",
    ]
    missing = write_json(
        tmp_path / "m.json",
        {"file_path_lister": {"s3_paths": ["s3://no-such-bucket-xyz/in/"], "batch_size": 1}},
    )
    result = run_cli("submit", "echo", str(missing))
    assert result.returncode != 0
    assert result.stderr.startswith("error:") and "no-such-bucket-xyz" in result.stderr
    assert "Traceback" not in result.stderr
    assert echo_api.jobs() == []  # nothing was started


def test_outputs_exactly_once_after_retries(tmp_path, store_dir, s3_bucket):
    marker_dir = tmp_path / "attempts"
    marker_dir.mkdir()
    project = write_project(
        tmp_path / "p",
        f"""
        import os
        class Handler:
            def handle_batch(self, payload, batch_id):
                marker = os.path.join({str(marker_dir)!r}, batch_id)
                if not os.path.exists(marker):
                    open(marker, "w").close()
                    raise RuntimeError("first attempt fails")
                return payload
        """,
        name="flaky-out",
    )
    job = batchapi.deploy(project).submit(
        {
            "item_list": {"items": list(range(12)), "batch_size": 3},
            "dead_letter": {"max_receive_count": 2},
            "output": f"s3://{s3_bucket}/out",
        }
    )
    assert job.wait(timeout=90) == "succeeded"
    assert job.metrics["failed"] == 4 and job.metrics["succeeded"] == 4
    fs = s3fs.S3FileSystem()
    paths = sorted(fs.ls(f"{s3_bucket}/out/{job.job_id}", refresh=True))
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"part-{i:06d}.jsonl" for i in range(4)]
    values = [int(v) for p in paths for v in fs.cat_file(p).decode().split()]
    assert values == list(range(12))


def test_store_on_s3_shared_between_processes(tmp_path, s3_bucket):
    store = f"s3://{s3_bucket}/batchapi"
    project = write_project(
        tmp_path / "slow",
        """
        import time
        class Handler:
            def handle_batch(self, payload):
                time.sleep(0.5)
        """,
        name="slow",
    )
    env = {"DASK_BATCHAPI_STORE": store}
    deployed = run_cli("deploy", str(project), env=env)
    assert deployed.returncode == 0, deployed.stderr
    sub = write_json(
        tmp_path / "s.json", {"item_list": {"items": list(range(60)), "batch_size": 1}}
    )
    submitted = run_cli("submit", "slow", str(sub), env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.splitlines()[0]
    # another process (another machine, as far as the store is concerned) lists and stops it
    listed = run_cli("get", "slow", "--store", store)
    assert job_id in listed.stdout
    client = batchapi.client(store=store)
    job = client.get_job("slow", job_id)
    deadline_status = None
    for _ in range(100):
        deadline_status = job.status["job_status"]["status"]
        if deadline_status == "running":
            break
        import time

        time.sleep(0.2)
    assert deadline_status == "running"
    stopped = run_cli("stop", "slow", job_id, "--store", store)
    assert stopped.returncode == 0, stopped.stderr
    assert job.wait(timeout=30) == "stopped"
    assert job.metrics["succeeded"] < 60


@pytest.mark.timeout(360)
@pytest.mark.slow  # ~1 min: 1,000 objects uploaded to moto, then a real job reads them all
def test_large_delimited_job_sees_every_value_exactly_once(tmp_path, store_dir, s3_bucket):
    files, per_file, batch_size = 1000, 1000, 997
    put_objects(
        s3_bucket,
        {
            f"big/part-{n:05d}.jsonl": "".join(
                f'{{"i": {i}}}\n' for i in range(n * per_file, (n + 1) * per_file)
            )
            for n in range(files)
        },
        max_workers=32,
    )
    project = write_project(
        tmp_path / "ids",
        """
        class Handler:
            def handle_batch(self, payload):
                return [value["i"] for value in payload]
        """,
        name="ids",
    )
    out = tmp_path / "out"
    job = batchapi.deploy(project).submit(
        {
            "workers": 2,
            "output": str(out),
            "delimited_files": {
                "s3_paths": [f"s3://{s3_bucket}/big/part-"],
                "batch_size": batch_size,
            },
        }
    )
    assert job.wait(timeout=240) == "succeeded"
    total = files * per_file
    batches = -(-total // batch_size)
    status = job.status["job_status"]
    assert status["total_batch_count"] == batches
    assert status["batch_metrics"]["succeeded"] == batches
    parts = sorted((out / job.job_id).iterdir())
    assert len(parts) == batches
    sizes = [len(p.read_text().split()) for p in parts]
    assert sizes[:-1] == [batch_size] * (batches - 1)
    seen = [int(v) for p in parts for v in p.read_text().split()]
    assert seen == list(range(total))  # every value exactly once, in order
