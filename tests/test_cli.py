"""The ``dask-batchapi`` CLI contract (DESIGN §2), through the real CLI in subprocesses.

One API is deployed per module and a handful of small one-worker jobs run on it; the
bad-input tests then check, after every bad command, that the good API and a finished job are
byte-for-byte unchanged in the store and that no job was added.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from conftest import run_cli, write_json, write_project

import dask_batchapi as batchapi

API = "cli-api"

HANDLER = """
    import os
    import time

    from dask_batchapi import logger

    class Handler:
        def __init__(self, config, job_spec):
            self.config = config

        def handle_batch(self, payload, batch_id):
            logger.info("handled batch", extra={"items": len(payload)})
            time.sleep(self.config.get("sleep", 0))
            fail_on = self.config.get("fail_on")
            if fail_on in payload and not os.path.exists(self.config.get("fixed", "")):
                raise ValueError(f"cannot handle {fail_on}")
"""

TERMINAL = {s.value for s in batchapi.JobStatus if s.is_terminal}


# -- helpers --------------------------------------------------------------------------------
def cli(*args: str, input: str | None = None, timeout: float = 90):
    return run_cli(*args, input=input, timeout=timeout)


def assert_ok(proc) -> None:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def assert_one_line_error(proc) -> None:
    """The contract for bad input: one ``error:`` line on stderr, nothing else, exit != 0."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def job_doc(job_id: str) -> dict:
    proc = cli("get", API, job_id, "-o", "json")
    assert_ok(proc)
    return json.loads(proc.stdout)


def job_status(store: Path, job_id: str) -> dict:
    """The status (read in-process: polling through subprocesses would be slow)."""
    return batchapi.get_job(API, job_id, store=str(store)).status["job_status"]


def wait_for(store: Path, job_id: str, statuses: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = job_status(store, job_id)
        if status["status"] in statuses or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def first_line(proc) -> str:
    return proc.stdout.splitlines()[0]


def table_column(text: str) -> list[str]:
    """The first column of a table printed by ``get`` (header dropped)."""
    return [line.split()[0] for line in text.splitlines()[1:] if line.strip()]


def snapshot(store: Path, job_id: str) -> dict:
    """Every byte of the API and of one finished job, plus which APIs and jobs exist."""
    files = {}
    for base in (store / "apis" / API, store / "jobs" / API / job_id):
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            files[str(path.relative_to(store))] = hashlib.sha256(path.read_bytes()).hexdigest()
    apis = sorted(p.name for p in (store / "apis").iterdir())
    jobs = sorted(p.name for p in (store / "jobs" / API).iterdir())
    return {"files": files, "apis": apis, "jobs": jobs}


# -- module fixtures: one store, one API, a few small jobs ----------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def store(work):
    path = work / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DASK_BATCHAPI_STORE", str(path))
        mp.delenv("DASK_BATCHAPI_CLUSTER", raising=False)
        yield path
        # no detached driver outlives the module
        client = batchapi.client(store=str(path))
        for api in client.list_apis():
            for job in api.jobs():
                if job["status"] not in TERMINAL:
                    client.stop_job(api.name, job["job_id"])


@pytest.fixture(scope="module")
def deployed(store, work):
    project = write_project(work / "project", HANDLER, name=API)
    return cli("deploy", str(project))


def submission(work: Path, name: str, items: list, batch_size: int = 1, **extra) -> str:
    data = {"workers": 1, "item_list": {"items": items, "batch_size": batch_size}, **extra}
    return str(write_json(work / f"{name}.json", data))


@pytest.fixture(scope="module")
def background_job(deployed, store, work):
    """A plain ``submit`` of a job that runs a few seconds: (process, job id, status after)."""
    path = submission(work, "background", list(range(8)), config={"sleep": 0.3})
    proc = cli("submit", API, path)
    assert_ok(proc)
    job_id = first_line(proc)
    return proc, job_id, job_status(store, job_id)["status"]


@pytest.fixture(scope="module")
def waited_job(deployed, work):
    """``submit - --wait -o json --workers 1`` of a submission that asks for 2 workers."""
    data = {"workers": 2, "item_list": {"items": [1, 2, 3, 4, 5], "batch_size": 2}}
    return cli("submit", API, "-", "--wait", "-o", "json", "--workers", "1", input=json.dumps(data))


@pytest.fixture(scope="module")
def finished_job(waited_job) -> str:
    assert_ok(waited_job)
    return json.loads(waited_job.stdout)["job_status"]["job_id"]


@pytest.fixture(scope="module")
def long_job(deployed, work):
    """``submit -o json`` of a job whose batches sleep 15 s each (the one ``stop`` stops)."""
    return cli(
        "submit", API, submission(work, "long", [1, 2, 3, 4], config={"sleep": 15}), "-o", "json"
    )


@pytest.fixture(scope="module")
def failing_job(deployed, work):
    """``submit --wait`` of a job whose batch [3, 4] fails twice: (process, job id)."""
    path = submission(
        work,
        "failing",
        [1, 2, 3, 4, 5, 6],
        batch_size=2,
        config={"fail_on": 3, "fixed": str(work / "fixed")},
        dead_letter={"max_receive_count": 2},
    )
    proc = cli("submit", API, path, "--wait")
    return proc, first_line(proc)


@pytest.fixture(scope="module")
def retried_job(failing_job, work):
    """``retry --wait`` of the failing job once its handler is fixed: (process, new job id)."""
    (work / "fixed").write_text("fixed")
    proc = cli("retry", API, failing_job[1], "--wait")
    return proc, first_line(proc) if proc.stdout else None


# -- deploy, submit, get, logs ---------------------------------------------------------------
def test_deploy_prints_the_api(deployed):
    assert_ok(deployed)
    assert deployed.stdout.startswith(f"deployed {API}")
    assert deployed.stderr == ""


def test_submit_prints_the_job_id_alone_and_returns_at_once(background_job):
    proc, job_id, status_after = background_job
    assert len(job_id.split()) == 1 and len(job_id) >= 8
    assert proc.stdout.strip() == job_id
    assert status_after not in TERMINAL  # the CLI returned while the job was still working


def test_logs_follow_ends_by_itself_when_the_job_ends(background_job, store):
    _, job_id, _ = background_job
    running = job_status(store, job_id)["status"] not in TERMINAL
    proc = cli("logs", API, job_id, "--follow", timeout=60)
    assert_ok(proc)
    assert running, "the job ended before `logs --follow` started; make it longer"
    assert job_status(store, job_id)["status"] in TERMINAL
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sum(line["message"] == "handled batch" for line in lines) == 8


def test_job_keeps_running_after_the_cli_exits(background_job, store):
    _, job_id, _ = background_job
    wait_for(store, job_id, TERMINAL, timeout=60)
    doc = job_doc(job_id)
    assert doc["job_status"]["status"] == "succeeded"
    assert doc["job_status"]["batch_metrics"]["succeeded"] == 8


def test_logs_prints_json_lines_with_the_handlers_lines(background_job, store):
    _, job_id, _ = background_job
    wait_for(store, job_id, TERMINAL, timeout=60)
    proc = cli("logs", API, job_id)
    assert_ok(proc)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    handled = [line for line in lines if line["message"] == "handled batch"]
    assert len(handled) == 8
    assert all(line["job_id"] == job_id and line["batch_id"] for line in handled)
    assert all(line["items"] == 1 and line["levelname"] == "INFO" for line in handled)


def test_get_job_prints_details(background_job, store):
    _, job_id, _ = background_job
    wait_for(store, job_id, TERMINAL, timeout=60)
    proc = cli("get", API, job_id)
    assert_ok(proc)
    assert f"job id: {job_id}" in proc.stdout
    assert "status: succeeded" in proc.stdout


def test_submit_wait_json_prints_the_final_status_document(waited_job):
    assert_ok(waited_job)
    doc = json.loads(waited_job.stdout)  # the document alone: no job id line before it
    status = doc["job_status"]
    assert status["status"] == "succeeded"
    assert status["total_batch_count"] == 3
    assert status["batches_in_queue"] == 0
    metrics = status["batch_metrics"]
    assert metrics["succeeded"] == 3 and metrics["failed"] == 0
    assert metrics["average_time_per_batch"] >= 0
    assert isinstance(status["worker_counts"], dict)
    assert status["start_time"] and status["end_time"]
    assert doc["api_spec"]["name"] == API


def test_submit_reads_stdin_and_workers_overrides(waited_job):
    assert_ok(waited_job)
    status = json.loads(waited_job.stdout)["job_status"]
    assert status["workers"] == 1  # --workers 1 beat the submission's 2
    assert status["item_list"]["item_count"] == 5  # the submission came from stdin


def test_submit_json_prints_the_job_record(long_job):
    assert_ok(long_job)
    record = json.loads(long_job.stdout)
    assert len(record["job_id"].split()) == 1
    assert record["api_name"] == API and record["workers"] == 1
    assert record["item_list"]["item_count"] == 4


def test_stop_a_long_running_job(long_job, store):
    job_id = json.loads(long_job.stdout)["job_id"]
    assert wait_for(store, job_id, {"running", *TERMINAL}, timeout=60)["status"] == "running"
    time.sleep(0.5)  # a batch is in the handler's sleep now
    proc = cli("stop", API, job_id)
    assert_ok(proc)
    assert job_id in proc.stdout
    assert wait_for(store, job_id, TERMINAL, timeout=6)["status"] == "stopped"


def test_submit_wait_fails_on_completed_with_failures(failing_job, store):
    proc, job_id = failing_job
    assert proc.returncode != 0
    assert "completed_with_failures" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert job_status(store, job_id)["status"] == "completed_with_failures"


def test_dead_letter_json_lists_the_failed_batches(failing_job):
    _, job_id = failing_job
    proc = cli("dead-letter", API, job_id, "-o", "json")
    assert_ok(proc)
    [record] = json.loads(proc.stdout)
    assert record["batch_id"]
    assert record["payload"] == [3, 4]
    assert record["attempts"] == 2
    assert "ValueError: cannot handle 3" in record["error"]
    assert "Traceback (most recent call last)" in record["traceback"]


def test_retry_wait_runs_only_the_dead_lettered_batches(retried_job, failing_job):
    proc, new_id = retried_job
    assert_ok(proc)
    assert new_id != failing_job[1]
    status = job_doc(new_id)["job_status"]
    assert status["status"] == "succeeded"
    assert status["retry_of"] == failing_job[1]
    assert status["total_batch_count"] == 1


def test_get_lists_the_api(deployed):
    proc = cli("get")
    assert_ok(proc)
    assert proc.stdout.splitlines()[0].split()[0] == "api"
    assert API in table_column(proc.stdout)


def test_get_api_lists_jobs_newest_first(retried_job, failing_job, store):
    proc = cli("get", API)
    assert_ok(proc)
    ids = table_column(proc.stdout)
    assert set(ids) == {p.name for p in (store / "jobs" / API).iterdir()}
    assert ids.index(retried_job[1]) < ids.index(failing_job[1])  # the retry came later
    assert ids == sorted(ids)


def test_dry_run_item_list_prints_only_validations_passed(deployed, store, work):
    before = sorted(p.name for p in (store / "jobs" / API).iterdir())
    proc = cli("submit", API, submission(work, "dry", [1, 2]), "--dry-run")
    assert_ok(proc)
    assert proc.stdout == "validations passed\n"
    assert sorted(p.name for p in (store / "jobs" / API).iterdir()) == before


def test_delete_removes_the_api(store_dir, tmp_path):
    assert_ok(cli("deploy", str(write_project(tmp_path / "p", HANDLER, name="doomed"))))
    proc = cli("delete", "doomed")
    assert_ok(proc)
    assert "doomed" in proc.stdout
    assert_one_line_error(cli("get", "doomed"))
    assert not (store_dir / "apis" / "doomed").exists()


# -- bad input: one line, exit != 0, nothing harmed ------------------------------------------
SPEC = """
    name: {api}
    kind: BatchAPI
    handler:
      type: python
      path: {path}
      config: {config}
    {extra}
"""

OK_HANDLER = """
    class Handler:
        def handle_batch(self, payload):
            pass
"""

BAD_PROJECTS = [  # (spec fields, handler source, what the message must name)
    pytest.param(
        {"spec": f"name: [{API}\nkind: BatchAPI\n"}, OK_HANDLER, "YAML", id="malformed-yaml"
    ),
    pytest.param({"extra": "replicas: 2"}, OK_HANDLER, "replicas", id="unknown-key"),
    pytest.param({"config": "[1, 2]"}, OK_HANDLER, "handler.config", id="wrong-type"),
    pytest.param({"path": "missing.py"}, OK_HANDLER, "missing.py", id="missing-handler-file"),
    pytest.param({}, "class Predictor:\n    pass\n", "Handler", id="no-handler-class"),
    pytest.param(
        {},
        "class Handler:\n    def handle_batch(self, payload, batch_idx):\n        pass\n",
        "batch_idx",
        id="unknown-signature-argument",
    ),
]


@pytest.mark.parametrize("fields, handler, named", BAD_PROJECTS)
def test_bad_project_is_rejected(fields, handler, named, finished_job, store, tmp_path):
    """A bad deploy under the good API's name: the deployed API stays as it was."""
    values = {"api": API, "path": "handler.py", "config": "{}", "extra": "", **fields}
    project = write_project(
        tmp_path / "p", handler, spec=fields.get("spec") or SPEC.format(**values)
    )
    before = snapshot(store, finished_job)
    proc = cli("deploy", str(project))
    assert_one_line_error(proc)
    assert named in proc.stderr
    assert snapshot(store, finished_job) == before


ITEMS = {"items": [1, 2], "batch_size": 1}
LISTER = {"s3_paths": ["s3://bucket/x"], "batch_size": 1}
BAD_SUBMISSIONS = [  # (submission, what the message must name)
    pytest.param({"workers": 1}, "item_list", id="no-source"),
    pytest.param(
        {"item_list": {"items": [], "batch_size": 1}}, "item_list.items", id="empty-items"
    ),
    pytest.param({"item_list": {"items": [1], "batch_size": 0}}, "got 0", id="batch-size-0"),
    pytest.param({"item_list": {"items": [1], "batch_size": "8"}}, "'8'", id="batch-size-str"),
    pytest.param(
        {"item_list": ITEMS, "file_path_lister": LISTER}, "file_path_lister", id="two-sources"
    ),
    pytest.param({"item_list": ITEMS, "workers": 0}, "workers", id="workers-0"),
    pytest.param({"item_list": ITEMS, "replicas": 2}, "replicas", id="unknown-key"),
]


@pytest.mark.parametrize("data, named", BAD_SUBMISSIONS)
def test_bad_submission_is_rejected(data, named, finished_job, store, tmp_path):
    path = write_json(tmp_path / "submission.json", data)
    before = snapshot(store, finished_job)
    proc = cli("submit", API, str(path))
    assert_one_line_error(proc)
    assert named in proc.stderr
    assert snapshot(store, finished_job) == before


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def under_a_file(tmp_path: Path) -> str:
    """A store path that cannot be a directory (we run as root: permissions do not stop us)."""
    return str(write_text(tmp_path / "regular-file", "not a store") / "store")


UNKNOWN = "0123456789abcdef"
BAD_COMMANDS = [  # (arguments from (tmp_path, finished job id, good submission), named)
    pytest.param(
        lambda t, j, s: ["submit", API, s, "--workers", "0"], "--workers", id="workers-flag-0"
    ),
    pytest.param(
        lambda t, j, s: ["submit", API, s, "--workers", "two"], "two", id="workers-flag-str"
    ),
    pytest.param(lambda t, j, s: ["submit", "no-such-api", s], "no-such-api", id="unknown-api"),
    pytest.param(lambda t, j, s: ["get", "no-such-api"], "no-such-api", id="unknown-api-get"),
    pytest.param(lambda t, j, s: ["get", API, UNKNOWN], UNKNOWN, id="unknown-job-get"),
    pytest.param(lambda t, j, s: ["stop", API, UNKNOWN], UNKNOWN, id="unknown-job-stop"),
    pytest.param(lambda t, j, s: ["retry", API, UNKNOWN], UNKNOWN, id="unknown-job-retry"),
    pytest.param(
        lambda t, j, s: ["submit", API, str(write_text(t / "bad.json", '{"item_list": '))],
        "bad.json",
        id="invalid-json",
    ),
    pytest.param(lambda t, j, s: ["submit", API, str(t / "nope.json")], "nope.json", id="no-file"),
    pytest.param(lambda t, j, s: ["get", "--store", under_a_file(t)], "store", id="store-get"),
    pytest.param(
        lambda t, j, s: ["submit", API, s, "--store", under_a_file(t)], "store", id="store-submit"
    ),
    pytest.param(
        lambda t, j, s: [
            "deploy",
            str(write_project(t / "p", OK_HANDLER)),
            "--store",
            under_a_file(t),
        ],
        "store",
        id="store-deploy",
    ),
    pytest.param(lambda t, j, s: ["retry", API, j], "no failed batches", id="retry-no-failures"),
    pytest.param(lambda t, j, s: ["resume", API, j], "already succeeded", id="resume-succeeded"),
    pytest.param(
        lambda t, j, s: ["stop", API, f"../{API}/{j}"],
        "../",
        id="job-id-with-path",
    ),
    pytest.param(
        lambda t, j, s: ["submit", API, s, "--cluster", "bogus"],
        "bogus",
        id="cluster-bogus",
    ),
]


@pytest.mark.parametrize("make_args, named", BAD_COMMANDS)
def test_bad_command_is_rejected(make_args, named, finished_job, store, work, tmp_path):
    args = make_args(tmp_path, finished_job, submission(work, "good", [1]))
    before = snapshot(store, finished_job)
    proc = cli(*args)
    assert_one_line_error(proc)
    assert named in proc.stderr
    assert snapshot(store, finished_job) == before
