"""Hostile input (issue 15), kept as tests: limits with clear errors, no silent coercion, and
errors that name the real cause. Real CLI subprocesses and files; one line, no traceback."""

from __future__ import annotations

import json
import os

import pytest
from conftest import run_cli, write_json, write_project
from test_hostile import one_line_error

import dask_batchapi as batchapi
from dask_batchapi.errors import SubmissionError

ECHO = """
    class Handler:
        def handle_batch(self, payload):
            return payload
    """
SPEC = "name: probe\nhandler:\n  path: handler.py\n"


@pytest.fixture
def project(tmp_path, store_dir):
    return write_project(tmp_path / "proj", ECHO, spec=SPEC)


def _spec(project, text: str) -> None:
    (project / "batchapi.yaml").write_text(text)


def _billion_laughs() -> str:
    lines = ["a0: &a0 [lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join([*lines, SPEC.strip(), "x: *a9", ""])


SPECS = {
    "alias bomb": (_billion_laughs(), "aliases expand to more than"),
    "recursive alias": ("a: &a [*a]\n" + SPEC, "refers to itself"),
    "deep nesting": (SPEC + "x: " + "[" * 150 + "]" * 150 + "\n", "nested deeper than 100"),
    "very deep nesting": (SPEC + "x: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deep"),
    "huge integer": (SPEC + "x: " + "9" * 5000 + "\n", "4300 digits"),
}


@pytest.mark.parametrize("kind", list(SPECS))
def test_hostile_specs_are_one_line(project, kind):
    text, expected = SPECS[kind]
    _spec(project, text)
    assert expected in one_line_error(run_cli("deploy", str(project), timeout=30))


def test_a_binary_env_file_is_one_line(project):
    (project / ".env").write_bytes(bytes(range(256)) * 4)
    assert ".env is not a text file" in one_line_error(run_cli("deploy", str(project)))
    (project / ".env").write_bytes(b"KEY=a\0b\n")
    assert "NUL" in one_line_error(run_cli("deploy", str(project)))


def test_a_symlink_loop_in_the_project_is_skipped(project):
    os.symlink("loop-b", project / "loop-a")
    os.symlink("loop-a", project / "loop-b")
    result = run_cli("deploy", str(project))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "loop-a" in result.stderr  # a warning says what was left out


def test_an_ignored_handler_fails_at_deploy(project):
    (project / ".cortexignore").write_text("handler.py\n")
    line = one_line_error(run_cli("deploy", str(project)))
    assert "handler.py is left out of the project archive" in line


SUBMISSIONS = {
    "deep json": ("[" * 150 + "]" * 150, "nested deeper than 100"),
    "very deep json": ("[" * 50_000 + "]" * 50_000, "nested too deep"),
    "huge integer": ("9" * 5000, "4300 digits"),
    "NaN": ("NaN", "strict JSON"),
    "Infinity": ("-Infinity", "strict JSON"),
}


@pytest.mark.parametrize("kind", list(SUBMISSIONS))
def test_hostile_submissions_are_one_line(project, tmp_path, kind):
    assert run_cli("deploy", str(project)).returncode == 0
    item, expected = SUBMISSIONS[kind]
    path = tmp_path / "s.json"
    path.write_text('{"item_list": {"batch_size": 1, "items": [1, ' + item + "]}}")
    assert expected in one_line_error(run_cli("submit", "probe", str(path)))
    assert not (tmp_path / "store" / "jobs").exists()  # nothing written


@pytest.mark.parametrize(
    "item, kind", [({1, 2}, "set"), (b"raw", "bytes"), (object(), "object"), ({1: "a"}, "key 1")]
)
def test_items_json_cannot_hold_are_refused_from_python(project, item, kind):
    api = batchapi.deploy(project)
    with pytest.raises(SubmissionError) as error:
        api.submit({"item_list": {"items": [1, 2, {"deep": [item]}], "batch_size": 1}})
    assert "item_list.items[2].deep[0]" in str(error.value) and kind in str(error.value)


BAD_OUTPUT = """
    class Handler:
        def handle_batch(self, payload):
            kind = payload[0]
            if kind == "generator":
                return (x for x in range(3))
            if kind == "set":
                return {1, 2}
            if kind == "object":
                return object()
            if kind == "nan":
                return [float("nan")]
            return {"ok": kind}
    """


def test_outputs_json_cannot_hold_fail_their_batch(tmp_path, store_dir):
    project = write_project(tmp_path / "out", BAD_OUTPUT, name="outputs")
    assert run_cli("deploy", str(project)).returncode == 0
    items = ["generator", "set", "object", "nan", "fine"]
    sub = {"item_list": {"items": items, "batch_size": 1}, "output": str(tmp_path / "o")}
    result = run_cli("submit", "outputs", str(write_json(tmp_path / "s.json", sub)), "--wait")
    assert result.returncode != 0
    job = result.stdout.split()[0]
    dead = json.loads(run_cli("dead-letter", "outputs", job, "-o", "json").stdout)
    messages = {d["index"]: d["error"] for d in dead}
    assert sorted(messages) == [0, 1, 2, 3], messages
    assert "generator" in messages[0] and "set" in messages[1] and "object" in messages[2]
    assert "strict JSON" in messages[3]
    (part,) = (tmp_path / "o" / job).iterdir()
    assert json.loads(part.read_text()) == {"ok": "fine"}


EXITING_INIT = """
    import os
    class Handler:
        def __init__(self):
            os._exit(3)
        def handle_batch(self, payload):
            pass
    """


def test_an_init_that_exits_its_worker_is_a_worker_error_naming_init(tmp_path, store_dir):
    project = write_project(tmp_path / "exit", EXITING_INIT, name="exiting")
    assert run_cli("deploy", str(project)).returncode == 0
    sub = {"workers": 2, "item_list": {"items": list(range(12)), "batch_size": 1}}
    result = run_cli("submit", "exiting", str(write_json(tmp_path / "s.json", sub)), "--wait")
    assert result.returncode != 0
    job = result.stdout.split()[0]
    doc = json.loads(run_cli("get", "exiting", job, "-o", "json").stdout)["job_status"]
    assert doc["status"] == "worker_error", doc
    assert "Handler.__init__" in doc["error"]["message"]


def test_stop_on_an_ended_job_says_so(project, tmp_path):
    assert run_cli("deploy", str(project)).returncode == 0
    sub = {"item_list": {"items": [1], "batch_size": 1}}
    result = run_cli("submit", "probe", str(write_json(tmp_path / "s.json", sub)), "--wait")
    job = result.stdout.split()[0]
    assert "had already ended (succeeded)" in one_line_error(run_cli("stop", "probe", job))


def test_an_unreachable_s3_endpoint_and_a_missing_bucket(s3_server, monkeypatch):
    monkeypatch.setenv(
        "DASK_BATCHAPI__STORAGE_OPTIONS__CLIENT_KWARGS__ENDPOINT_URL", "http://127.0.0.1:9"
    )
    monkeypatch.setenv("DASK_BATCHAPI__STORAGE_OPTIONS__CONFIG_KWARGS__RETRIES__MAX_ATTEMPTS", "1")
    line = one_line_error(run_cli("get", "--store", "s3://some-bucket/store"))
    assert "cannot list" in line and "connect" in line.lower()
    monkeypatch.setenv(
        "DASK_BATCHAPI__STORAGE_OPTIONS__CLIENT_KWARGS__ENDPOINT_URL", s3_server.endpoint_url
    )
    line = one_line_error(run_cli("get", "--store", "s3://no-such-bucket/store"))
    assert "bucket 'no-such-bucket'" in line and "does not exist" in line
