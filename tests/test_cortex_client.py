"""Cortex's Python client names, each used exactly as Cortex's docs and tests use them
(docs/clients/python.md, docs/workloads/*/example.md and test/e2e of Cortex v0.31/v0.32), on a
real embedded cluster; and the warning when the real Cortex package is installed too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dask
import pytest

import dask_batchapi as batchapi
from dask_batchapi.errors import JobStateError

HANDLER = """
    from dask_batchapi import logger

    class Handler:
        def handle_batch(self, payload):
            logger.info("handled", extra={"n": len(payload)})
    """

API_SPEC = {
    "name": "text-generator",
    "kind": "BatchAPI",
    "handler": {"type": "python", "path": "handler.py", "config": {"greeting": "hi"}},
}


@pytest.fixture
def cx(tmp_path, store_dir, monkeypatch):
    """``cortex.client("aws")`` with an ``aws`` environment in dask config."""
    import cortex

    envs = {"aws": {"store": str(store_dir)}}
    with dask.config.set({"batchapi.environments": envs}):
        yield cortex.client("aws")


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "handler.py").write_text(textwrap.dedent(HANDLER))
    return root


def _listing(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_create_api_takes_the_spec_as_a_dict_and_writes_nothing(cx, project, monkeypatch):
    before = _listing(project)
    monkeypatch.chdir(project)
    api = cx.create_api(API_SPEC, project_dir=".")  # docs/workloads/dependencies/example.md
    assert api.name == "text-generator"
    assert _listing(project) == before  # no temporary spec file, no __pycache__
    # the e2e form: keyword arguments
    again = cx.create_api(api_spec=API_SPEC, project_dir=project)
    assert again["spec"]["handler"]["config"] == {"greeting": "hi"}
    assert again.record["files"] == ["handler.py"]


def test_create_api_validates_the_dict_like_a_spec_file(cx, project):
    bad = {**API_SPEC, "handler": {**API_SPEC["handler"], "log_level": "loud"}}
    with pytest.raises(batchapi.SpecError) as error:
        cx.create_api(bad, project_dir=str(project))
    assert str(error.value).startswith("api_spec: handler.log_level must be one of")
    with pytest.raises(batchapi.HandlerError, match="api_spec: handler.path 'nope.py' not found"):
        cx.create_api({**API_SPEC, "handler": {"path": "nope.py"}}, project_dir=str(project))
    with pytest.raises(batchapi.SpecError, match="api_spec must be a dict"):
        cx.create_api("cortex.yaml", project_dir=str(project))
    with pytest.raises(
        batchapi.SpecError, match=r"create_api\(predictor=/task=\) is not supported"
    ):
        cx.create_api(API_SPEC, predictor=object)
    assert cx.list_apis() == []


def test_cortex_client_names_end_to_end(cx, project, capsys):
    cx.create_api(API_SPEC, project_dir=str(project))
    api = cx.get_api("text-generator")
    assert api["spec"]["name"] == "text-generator"
    assert api["endpoint"] is None  # no job service configured
    with dask.config.set({"batchapi.service-url": "http://127.0.0.1:8888/"}):
        # docs/workloads/batch/example.md: batch_endpoint = cx.get_api(...)["endpoint"]
        assert cx.get_api("text-generator")["endpoint"] == "http://127.0.0.1:8888/text-generator"
    assert [a["spec"]["name"] for a in cx.list_apis()] == ["text-generator"]

    job = cx.submit(
        "text-generator", {"workers": 1, "item_list": {"items": [1, 2, 3], "batch_size": 1}}
    )
    job_id = job.job_id
    cx.stream_job_logs("text-generator", job_id)  # prints and follows until the job ends
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(1 for line in printed if line.get("message") == "handled") == 3
    assert printed[-1]["message"] == "job ended: succeeded"

    # test/e2e/e2e/utils.py: job_info["job_status"]["status"]
    job_info = cx.get_job("text-generator", job_id)
    assert job_info["job_status"]["status"] == "succeeded"
    assert set(job_info) == {"job_status", "api_spec", "endpoint"}
    assert job_info["api_spec"]["name"] == "text-generator"
    assert job_info["endpoint"] is None
    assert [j["job_id"] for j in cx.get_api("text-generator")["batch_job_statuses"]] == [job_id]
    with pytest.raises(TypeError):
        job_info["job_status"] = {}  # read-only
    assert job_info == job_info and len({job_info, cx.get_job("text-generator", job_id)}) == 2

    with pytest.raises(JobStateError, match="had already ended"):  # one line, as the CLI says
        cx.stop_job("text-generator", job_id, keep_cache=False)
    cx.delete_api("text-generator", keep_cache=False)
    assert cx.list_apis() == []


def test_logs_follow_is_a_python_iterator_the_cli_only_prints(cx, project):
    api = cx.create_api(API_SPEC, project_dir=str(project))
    job = api.submit({"workers": 1, "item_list": {"items": [1, 2], "batch_size": 1}})
    lines = list(job.log_lines(follow=True))  # returns once the job has ended
    assert job["job_status"]["status"] == "succeeded"
    assert json.loads(lines[-1])["message"] == "job ended: succeeded"
    assert list(job.log_lines()) == lines  # nothing comes after the end


def _fake_cortex_cli(root: Path) -> Path:
    """What ``pip install cortex`` leaves: a ``cortex`` package and its dist-info."""
    (root / "cortex").mkdir(parents=True)
    (root / "cortex" / "__init__.py").write_text("REAL_CORTEX = True\n")
    info = root / "cortex-0.42.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cortex\nVersion: 0.42.1\n")
    (info / "RECORD").write_text("cortex/__init__.py,,\n")
    return root


SCRIPT = """
import dask_batchapi as batchapi
batchapi.client(store={store!r})
batchapi.client(store={store!r})
import cortex
print("REAL" if getattr(cortex, "REAL_CORTEX", False) else "OURS")
"""


@pytest.mark.parametrize("first", ["real", "ours"])
def test_the_real_cortex_package_is_detected_and_said_once(tmp_path, first):
    fake = _fake_cortex_cli(tmp_path / "site")
    ours = str(Path(batchapi.__file__).resolve().parents[1])
    paths = [str(fake), ours] if first == "real" else [ours, str(fake)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    script = SCRIPT.format(store=str(tmp_path / "store"))
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,  # not the repository root, whose cortex/ would come first
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("CortexPackageWarning") == 1, result.stderr
    if first == "real":
        assert result.stdout.strip() == "REAL"
        assert f"`import cortex` gives {fake / 'cortex' / '__init__.py'}" in result.stderr
    else:
        assert result.stdout.strip() == "OURS"
        assert "the Cortex CLI package cortex 0.42.1 is installed" in result.stderr
    assert "pip uninstall cortex" in result.stderr


def test_no_warning_without_the_real_cortex_package():
    from dask_batchapi.api.compat import cortex_package_problem

    assert cortex_package_problem() is None
