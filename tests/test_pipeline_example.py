"""examples/pipeline, run as its README says: stage one's on_job_complete submits stage two."""

from __future__ import annotations

import json
import shutil

from conftest import EXAMPLES, run_cli, wait_for

PIPELINE = EXAMPLES / "pipeline"


def _status(api: str, job_id: str, cwd) -> dict:
    result = run_cli("get", api, job_id, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["job_status"]


def test_two_stage_pipeline_example(tmp_path, store_dir, monkeypatch):
    shutil.copy(PIPELINE / "submission.json", tmp_path / "submission.json")
    monkeypatch.chdir(tmp_path)  # the submission's relative output lands here
    for stage in ("stage-one", "stage-two"):
        result = run_cli("deploy", str(PIPELINE / stage))
        assert result.returncode == 0, result.stderr
    result = run_cli("submit", "pipeline-stage-one", "submission.json", "--wait")
    assert result.returncode == 0, result.stderr
    parent = result.stdout.split()[0]

    one = _status("pipeline-stage-one", parent, tmp_path)
    [child_ref] = one["triggered"]
    assert child_ref["api_name"] == "pipeline-stage-two"
    child = child_ref["job_id"]
    two = wait_for(
        lambda: (
            (s := _status("pipeline-stage-two", child, tmp_path))["status"]
            in ("succeeded", "completed_with_failures", "worker_error", "unexpected_error")
            and s
        ),
        90,
        "stage two to end",
    )
    assert two["status"] == "succeeded", two.get("error")
    assert two["triggered_by"] == {"api_name": "pipeline-stage-one", "job_id": parent}

    texts = json.loads((PIPELINE / "submission.json").read_text())["item_list"]["items"]
    expected: dict[str, int] = {}
    for word in " ".join(texts).split():
        expected[word] = expected.get(word, 0) + 1
    [part] = sorted((tmp_path / "pipeline-output-totals" / child).iterdir())
    result = json.loads(part.read_text())
    assert result == {"stage_one_job_id": parent, "totals": expected}

    shown = run_cli("get", "pipeline-stage-two", child).stdout
    assert f"triggered by: pipeline-stage-one {parent}" in shown
    shown = run_cli("get", "pipeline-stage-one", parent).stdout
    assert f"triggered: pipeline-stage-two {child}" in shown
