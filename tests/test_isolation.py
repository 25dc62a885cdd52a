"""Poison items: isolation down to single items, the error budget, item ids, safe resume.

Real jobs on the embedded LocalCluster; the handler's failures are real exceptions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import psutil
import pytest
from conftest import run_cli, wait_for, write_project

import dask_batchapi as batchapi
from dask_batchapi.driver.isolation import Isolation
from dask_batchapi.errors import APIRedeployed, SubmissionError
from dask_batchapi.sources.batches import BatchRef, iter_delimited_batches, load_payloads
from dask_batchapi.sources.delimited import index_file
from dask_batchapi.sources.split import halves
from dask_batchapi.spec.failures import ErrorBudget
from dask_batchapi.spec.submission import parse_submission
from dask_batchapi.status import JobState

POISON_HANDLER = """
    import os, time

    class Handler:
        def __init__(self, config):
            self.poison = set(config["poison"])
            self.fixed = config.get("fixed")
            self.sleep = config.get("sleep", 0)

        def handle_batch(self, payload):
            time.sleep(self.sleep)
            if not (self.fixed and os.path.exists(self.fixed)):
                for item in payload:
                    value = item["v"] if isinstance(item, dict) else item
                    if value in self.poison or (self.poison == {-1} and value // 10 % 10 < 3):
                        raise ValueError(f"poison {value}")
            return [item["v"] * 2 if isinstance(item, dict) else item * 2 for item in payload]
"""


@pytest.fixture
def poison_api(tmp_path, store_dir):
    return batchapi.deploy(write_project(tmp_path / "proj", POISON_HANDLER, name="poison"))


def _lines(out: Path, job_id: str) -> list:
    """Every output line of a job, reading its parts in sorted name order."""
    parts = sorted((out / job_id).glob("part-*.jsonl"))
    return [json.loads(line) for part in parts for line in part.read_text().splitlines()]


def test_two_poison_items_of_1000_cost_two_records_and_nothing_else(poison_api, tmp_path):
    out, flag = tmp_path / "out", tmp_path / "fixed"
    items = [{"id": f"item-{i}", "v": i} for i in range(1000)]
    job = poison_api.submit(
        {
            "workers": 2,
            "item_list": {"items": items, "batch_size": 50, "id_key": "id"},
            "dead_letter": {"max_receive_count": 1, "isolate_items": True},
            "config": {"poison": [137, 602], "fixed": str(flag)},
            "output": str(out),
        }
    )
    assert job.wait(timeout=120) == "completed_with_failures"
    status = job.status["job_status"]
    assert status["items_dead_lettered"] == 2
    assert status["item_metrics"] == {"succeeded": 998, "dead_lettered": 2, "not_attempted": 0}
    assert status["batch_metrics"]["dead_lettered"] == 2
    assert status["batch_metrics"]["succeeded"] == 18
    # every other output exactly once, in input order, each line carrying its item's id
    lines = _lines(out, job.job_id)
    expected = [i for i in range(1000) if i not in (137, 602)]
    assert [line["id"] for line in lines] == [f"item-{i}" for i in expected]
    assert [line["output"] for line in lines] == [2 * i for i in expected]
    records = job.dead_letter()
    assert [r["item_index"] for r in records] == [137, 602]
    assert [r["id"] for r in records] == ["item-137", "item-602"]
    assert [r["item"] for r in records] == [items[137], items[602]]
    assert records[0]["batch_id"].startswith(f"{job.job_id}-000002.")
    assert all("ValueError: poison" in r["error"] and r["attempts"] == 1 for r in records)
    assert all("Traceback" in r["traceback"] for r in records)
    # the split's cost: about 2 * log2(batch_size) extra handler calls per poison item (every
    # call that succeeded wrote one part; 20 calls without poison)
    calls = status["batch_metrics"]["failed"] + len(list((out / job.job_id).glob("part-*")))
    assert calls - 20 <= 2 * math.ceil(2 * math.log2(50)), calls
    # the CLI shows the item outcomes
    got = run_cli("get", "poison", job.job_id)
    assert "items: 998 succeeded, 2 dead-lettered, 0 not attempted" in got.stdout, got.stderr
    table = run_cli("dead-letter", "poison", job.job_id).stdout.splitlines()
    assert table[0].split()[:3] == ["batch", "id", "item"] and len(table) == 3
    assert table[1].split()[1] == "137"
    # retry reruns only the two items
    flag.write_text("fixed")
    retry = job.retry()
    assert retry.wait(timeout=90) == "succeeded"
    assert retry.status["job_status"]["item_metrics"]["succeeded"] == 2
    assert _lines(out, retry.job_id) == [
        {"id": "item-137", "output": 274},
        {"id": "item-602", "output": 1204},
    ]


def test_driver_killed_mid_isolation_then_resumed_writes_every_output_once(poison_api, tmp_path):
    out = tmp_path / "out"
    job = poison_api.submit(
        {
            "workers": 1,
            "item_list": {"items": list(range(200)), "batch_size": 20},
            "dead_letter": {"max_receive_count": 1, "isolate_items": True},
            "config": {"poison": [5, 150], "sleep": 0.15},
            "output": str(out),
        }
    )
    wait_for(lambda: job.dead_letter(), 60, "a first item in the dead letter")
    state = JobState.from_dict(job.client.store.read_state("poison", job.job_id))
    driver = psutil.Process(state.driver["pid"])
    children = driver.children(recursive=True)
    driver.kill()
    assert len(job.dead_letter()) == 1  # killed while the second batch was being isolated
    wait_for(lambda: not any(_alive(c) for c in children), 30, "the workers to exit")
    result = run_cli("resume", "poison", job.job_id, "--wait")
    status = job.status["job_status"]
    assert status["status"] == "completed_with_failures", result.stderr
    assert status["run"] == 2
    assert status["item_metrics"] == {"succeeded": 198, "dead_lettered": 2, "not_attempted": 0}
    assert [r["item_index"] for r in job.dead_letter()] == [5, 150]
    assert _lines(out, job.job_id) == [2 * i for i in range(200) if i not in (5, 150)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_config_default_turns_isolation_on(poison_api, monkeypatch):
    monkeypatch.setenv("DASK_BATCHAPI__ISOLATE_ITEMS", "true")  # the detached runner reads it
    job = poison_api.submit(
        {"item_list": {"items": list(range(8)), "batch_size": 4}, "config": {"poison": [6]}}
    )
    assert job.wait(timeout=60) == "completed_with_failures"
    [record] = job.dead_letter()
    assert record["item_index"] == 6
    assert job.status["job_status"]["item_metrics"]["succeeded"] == 7


def test_delimited_poison_value_is_isolated_with_its_id(poison_api, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    values = [{"key": f"k{i}", "v": i} for i in range(45)]
    (data / "a.jsonl").write_text("".join(json.dumps(v) + "\n" for v in values[:17]))
    (data / "b.jsonl").write_text("".join(json.dumps(v) + "\n" for v in values[17:]))
    job = poison_api.submit(
        {
            "delimited_files": {"s3_paths": [str(data)], "batch_size": 10, "id_key": "key"},
            "dead_letter": {"max_receive_count": 2, "isolate_items": True},
            "config": {"poison": [16, 17]},  # the last value of a.jsonl, the first of b.jsonl
            "output": str(out),
        }
    )
    assert job.wait(timeout=90) == "completed_with_failures"
    records = job.dead_letter()
    assert [(r["item_index"], r["id"], r["item"]) for r in records] == [
        (16, "k16", values[16]),
        (17, "k17", values[17]),
    ]
    assert all(r["attempts"] == 2 for r in records)  # a single item gets max_receive_count
    lines = _lines(out, job.job_id)
    assert [line["id"] for line in lines] == [f"k{i}" for i in range(45) if i not in (16, 17)]
    assert job.status["job_status"]["item_metrics"]["succeeded"] == 43


def test_a_malformed_json_line_is_isolated_alone(poison_api, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    lines = [json.dumps({"key": f"k{i}", "v": i}) for i in range(30)]
    lines[11] = '{"key": "k11", "v": 11,,}'  # the one bad record
    (data / "a.jsonl").write_text("\n".join(lines) + "\n")
    job = poison_api.submit(
        {
            "delimited_files": {"s3_paths": [str(data)], "batch_size": 10, "id_key": "key"},
            "dead_letter": {"max_receive_count": 1, "isolate_items": True},
            "config": {"poison": []},
            "output": str(out),
        }
    )
    assert job.wait(timeout=90) == "completed_with_failures"
    [record] = job.dead_letter()
    assert record["item_index"] == 11 and record["item"] is None
    assert record["error_type"] == "InvalidJSONError" and "line 12" in record["error"]
    assert [line["id"] for line in _lines(out, job.job_id)] == [
        f"k{i}" for i in range(30) if i != 11
    ]


def test_file_path_lister_items_are_files(poison_api, tmp_path):
    data = tmp_path / "files"
    data.mkdir()
    for i in range(7):
        (data / f"f{i}.txt").write_text(str(i))
    project = write_project(
        tmp_path / "files-proj",
        """
        class Handler:
            def handle_batch(self, payload):
                if any(url.endswith("f4.txt") for url in payload):
                    raise ValueError("bad file")
                return [url.rsplit("/", 1)[1] for url in payload]
        """,
        name="files",
    )
    out = tmp_path / "out"
    job = batchapi.deploy(project).submit(
        {
            "file_path_lister": {"s3_paths": [f"{data}/"], "batch_size": 3},
            "dead_letter": {"max_receive_count": 1, "isolate_items": True},
            "output": str(out),
        }
    )
    assert job.wait(timeout=90) == "completed_with_failures"
    [record] = job.dead_letter()
    assert record["item"].endswith("f4.txt") and record["item_index"] == 4
    assert _lines(out, job.job_id) == [f"f{i}.txt" for i in range(7) if i != 4]


def test_error_budget_stops_a_failing_job_early_and_resume_runs_the_rest(poison_api, tmp_path):
    flag = tmp_path / "fixed"
    job = poison_api.submit(
        {
            "workers": 1,
            "item_list": {"items": list(range(3000)), "batch_size": 10},
            "error_budget": {"max_failed_ratio": 0.05, "min_items": 100},
            "config": {"poison": [-1], "fixed": str(flag)},  # 30% of the items fail
        }
    )
    assert job.wait(timeout=90) == "completed_with_failures"
    status = job.status["job_status"]
    assert status["error"]["reason"] == "error budget exceeded"
    assert status["error"]["failed_items"] > 0.05 * status["error"]["seen_items"]
    not_attempted = status["not_attempted"]
    assert not_attempted["batches"] >= 200  # of 300: stopped well before the end
    metrics = status["batch_metrics"]
    assert metrics["succeeded"] + metrics["dead_lettered"] + not_attempted["batches"] == 300
    assert not_attempted["items"] == 10 * not_attempted["batches"]
    assert status["item_metrics"]["not_attempted"] == not_attempted["items"]
    ran = metrics["dead_lettered"]
    # after a fix, resume runs only the batches never attempted
    flag.write_text("fixed")
    result = run_cli("resume", "poison", job.job_id, "--wait")
    assert result.returncode != 0  # completed_with_failures: the first run's dead letter stays
    status = job.status["job_status"]
    assert status["status"] == "completed_with_failures" and status["error"] is None
    assert status["batch_metrics"]["succeeded"] + ran == 300
    assert status["item_metrics"]["not_attempted"] == 0


def test_resume_after_redeploy_is_refused_unless_forced(tmp_path, store_dir):
    handler = (
        "class Handler:\n    def handle_batch(self, payload):\n        raise ValueError('v1')\n"
    )
    project = write_project(tmp_path / "p", handler, name="versioned")
    api = batchapi.deploy(project)
    job = api.submit({"item_list": {"items": [1, 2, 3], "batch_size": 3}})
    assert job.wait(timeout=60) == "completed_with_failures"
    (project / "handler.py").write_text(handler.replace("v1", "v2"))
    batchapi.deploy(project)
    result = run_cli("resume", "versioned", job.job_id)
    assert result.returncode != 0
    assert "redeployed" in result.stderr and "handler.py" in result.stderr
    assert "--force" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(APIRedeployed):
        job.resume()
    result = run_cli("resume", "versioned", job.job_id, "--force", "--wait")
    status = job.status["job_status"]
    assert status["status"] == "completed_with_failures", result.stderr
    assert status["mixed_versions"] is True
    assert [v["from_run"] for v in status["versions"]] == [1, 2]
    assert status["versions"][0]["archive_sha256"] == status["archive_sha256"]
    assert status["versions"][1]["archive_sha256"] != status["archive_sha256"]
    # the version it runs now is recorded: resuming again needs no --force
    assert run_cli("resume", "versioned", job.job_id, "--wait").returncode != 0
    assert job.status["job_status"]["run"] == 3


# -- the parts, without a cluster -----------------------------------------------------------


def test_halves_of_delimited_segments_read_their_own_values(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text("".join(f"{i}\n" for i in range(100)))
    [ref] = list(iter_delimited_batches([index_file(str(path), 8)], 100))
    left, right = halves(ref)
    ll, lr = halves(left)
    payloads = load_payloads([ll, lr, right])
    assert payloads == [list(range(25)), list(range(25, 50)), list(range(50, 100))]
    assert (lr.path, lr.first_item, right.first_item) == ("01", 25, 50)


def test_isolation_counts_a_batch_final_once_every_part_is():
    iso = Isolation("job", batch_size=4, max_attempts=3, id_key=None)
    ref = BatchRef(2, items=[1, 2, 3, 4], first_item=8)
    left, right = iso.split(ref)
    assert iso.attempts_for(ref) == 3 and iso.attempts_for(left) == 1
    rl, rr = iso.split(right)
    assert iso.attempts_for(rl) == 3  # a single item gets every attempt
    assert iso.part_done(left, 2, 0) is None
    assert iso.part_done(rl, 1, 0) is None
    assert iso.part_done(rr, 0, 1) == (3, 1)
    record = iso.item_record(rr, ("ValueError", "bad", "tb"), None, 3, 0)
    assert (record["item_index"], record["item"], record["batch_id"]) == (11, 4, "job-000002.11")


def test_submission_extensions_validate_in_one_line():
    sub = parse_submission(
        {
            "item_list": {"items": [{"id": 1}], "batch_size": 1, "id_key": "id"},
            "dead_letter": {"max_receive_count": 2, "isolate_items": True},
            "error_budget": {"max_failed_items": 3},
        }
    )
    assert parse_submission(sub.to_dict()) == sub
    assert sub.id_key == "id" and sub.error_budget == ErrorBudget(max_failed_items=3)
    bad = [
        ({"error_budget": {"max_failed_ratio": 1.5}}, "error_budget.max_failed_ratio"),
        ({"error_budget": {"min_items": 5}}, "error_budget.min_items"),
        ({"error_budget": {"ratio": 0.1}}, "unknown key 'ratio'"),
        ({"dead_letter": {"max_receive_count": 1, "isolate_items": 1}}, "isolate_items"),
    ]
    for extra, message in bad:
        with pytest.raises(SubmissionError, match=message):
            parse_submission({"item_list": {"items": [1], "batch_size": 1}, **extra})
    with pytest.raises(SubmissionError, match="unknown key 'id_key'"):
        parse_submission(
            {"file_path_lister": {"s3_paths": ["s3://b/"], "batch_size": 1, "id_key": "x"}}
        )


def test_item_list_items_without_their_id_are_refused_at_submit(poison_api):
    with pytest.raises(SubmissionError, match=r"item_list.items\[1\] has no field 'id'"):
        poison_api.submit(
            {"item_list": {"items": [{"id": 1}, {"v": 2}], "batch_size": 1, "id_key": "id"}}
        )


def test_error_budget_counts():
    assert not ErrorBudget(max_failed_ratio=0.05, min_items=100).exceeded(failed=50, seen=99)
    assert ErrorBudget(max_failed_ratio=0.05, min_items=100).exceeded(failed=6, seen=100)
    assert not ErrorBudget(max_failed_ratio=0.05, min_items=100).exceeded(failed=5, seen=100)
    assert ErrorBudget(max_failed_items=0).exceeded(failed=1, seen=1)
