"""Every notebook in notebooks/ runs top to bottom on a real kernel and shows what it says.

Each notebook is executed with nbclient on an ipykernel that runs this environment's Python
(a kernelspec written to a temporary folder, so no other installed kernel can be picked up),
with the notebooks' folder as the working directory and an environment free of the test
session's S3 and store settings. The executed copies are written to
``test-output/notebooks/`` for a look after a failure.

Widgets are checked through the state saved in the executed notebook (the
``application/vnd.jupyter.widget-state+json`` metadata: what a front end received over the
comms). nbclient only records the messages that arrive while a cell runs, whereas a browser
receives them whenever they come; so an extra cell, added to the executed copy only, waits for
the progress threads and re-sends every widget's state (the :data:`SETTLE` cell). Two tests
check without that cell what a user of nbconvert would see.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "test-output" / "notebooks"
KERNEL_NAME = "batchapi-test-python"
CELL_TIMEOUT = 120

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

# Test only: wait for the progress displays' threads, then send every widget's whole state, so
# the saved notebook holds the state a live front end ends with.
SETTLE = """
import gc
import threading

import ipywidgets

for thread in threading.enumerate():
    if thread.name == "batchapi-progress":
        thread.join(60)
for obj in gc.get_objects():
    if isinstance(obj, ipywidgets.Widget) and obj.comm is not None:
        obj.send_state()
"""


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    """A kernelspec that runs this interpreter (the venv's), in a folder of its own."""
    folder = tmp_path_factory.mktemp("kernels")
    spec_dir = folder / KERNEL_NAME
    spec_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dask-batchapi tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(folder)], ensure_native_kernel=False)


def kernel_env() -> dict[str, str]:
    """This environment, less what would point a notebook at the test session's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DASK_BATCHAPI"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["DASK_BATCHAPI__KEEP_ALIVE"] = "0"  # runners exit with their job (no warm one lingers)
    return env


def execute(
    kernel_specs: KernelSpecManager,
    name: str,
    before: list[str] = (),
    after: list[str] = (),
    save_as: str | None = None,
):
    """Run ``notebooks/<name>.ipynb`` (plus test-only cells) and return the executed notebook."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nb.cells = [
        *(nbformat.v4.new_code_cell(c) for c in before),
        *nb.cells,
        *(nbformat.v4.new_code_cell(c) for c in after),
    ]
    km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_specs)
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT,
        startup_timeout=60,
        store_widget_state=True,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    try:
        client.execute(env=kernel_env())
    finally:
        EXECUTED.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, EXECUTED / f"{save_as or name}.ipynb")
    return nb


# --- reading an executed notebook ----------------------------------------------------------


def code_cells(nb, ending: str) -> list:
    """The code cells whose last line ends with ``ending`` (``job``: the cells that show it)."""
    return [
        c
        for c in nb.cells
        if c.cell_type == "code" and c.source.strip().splitlines()[-1].endswith(ending)
    ]


def code_cell(nb, ending: str):
    [cell] = code_cells(nb, ending)
    return cell


def text(cell) -> str:
    """Everything a cell printed or returned, as plain text."""
    parts = []
    for output in cell.outputs:
        assert output.output_type != "error", f"{output.ename}: {output.evalue}"
        if output.output_type == "stream":
            parts.append(output.text)
        elif "text/plain" in output.get("data", {}):
            parts.append(output.data["text/plain"])
    return "\n".join(parts)


def result(cell):
    """The cell's value (its ``execute_result``), evaluated as a Python literal."""
    [output] = [o for o in cell.outputs if o.output_type == "execute_result"]
    return ast.literal_eval(output.data["text/plain"])


def html(cell) -> str:
    [output] = [o for o in cell.outputs if "text/html" in o.get("data", {})]
    return output.data["text/html"]


def widget(nb, cell) -> dict:
    """The values drawn by the progress widget a cell displayed, from the saved widget state."""
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    [view] = [o.data[WIDGET_VIEW] for o in cell.outputs if WIDGET_VIEW in o.get("data", {})]
    root = state[view["model_id"]]["state"]
    assert "batchapi-progress" in root["_dom_classes"]
    markup = "".join(_html_values(state, view["model_id"]))

    def find(pattern: str) -> str:
        match = re.search(pattern, markup)
        assert match, f"{pattern!r} not in the widget's HTML: {markup}"
        return match[1]

    return {
        "status": find(r'class="batchapi-status"[^>]*>([^<]*)<'),
        "percent": int(find(r'class="batchapi-bar"[^>]*aria-valuenow="(\d+)"')),
        "counts": find(r'class="batchapi-counts">([^<]*)<'),
        "red": float(find(r'class="batchapi-bar-dead-lettered" style="width:([\d.]+)%')),
        "job_id": find(r"<code>([0-9a-f]+)</code>"),
        "html": markup,
    }


def _html_values(state: dict, model_id: str):
    model = state[model_id]["state"]
    if isinstance(model.get("value"), str):
        yield model["value"]
    for child in model.get("children", ()):
        yield from _html_values(state, child.removeprefix("IPY_MODEL_"))


def succeeded(batches: int) -> dict:
    return {
        "status": "✓ succeeded",
        "percent": 100,
        "counts": f"{batches} succeeded / 0 failed attempts / {batches} batches",
        "red": 0.0,
    }


def final(values: dict) -> dict:
    return {k: values[k] for k in ("status", "percent", "counts", "red")}


# --- the notebooks -------------------------------------------------------------------------


def test_quickstart(kernel_specs):
    nb = execute(kernel_specs, "01-quickstart", after=[SETTLE])
    first_api, last_api = code_cells(nb, "api")
    assert "BatchAPI word-count" in html(first_api)

    job = widget(nb, code_cell(nb, "job"))
    assert final(job) == succeeded(10)
    assert "2 workers" in job["html"] and ">dashboard</a>" in job["html"]
    assert result(code_cell(nb, "job.wait()")) == "succeeded"
    metrics = result(code_cell(nb, "job.metrics"))
    assert (metrics["succeeded"], metrics["failed"], metrics["dead_lettered"]) == (10, 0, 0)
    assert "10 parts, 40 rows" in text(code_cell(nb, "rows[:3]"))
    logs = text(code_cell(nb, 'line.get("top", ""))'))
    assert "job done: top words" in logs and "job ended: succeeded" in logs

    # Re-attached from the store: the same job, the same final widget.
    reattached = widget(nb, code_cell(nb, "job.job_id, store=store)"))
    assert final(reattached) == succeeded(10)
    assert reattached["job_id"] == job["job_id"]
    listing = html(last_api)
    assert job["job_id"] in listing and "<td>succeeded</td>" in listing and "10/10" in listing


def test_s3_delimited_files(kernel_specs):
    nb = execute(kernel_specs, "02-s3-delimited-files", after=[SETTLE])
    started = text(code_cell(nb, "endpoint)"))
    assert re.search(r"S3 server at http://127\.0\.0\.1:\d+", started)
    keys = result(code_cell(nb, '["Contents"])'))
    assert keys == ["2026/11/01.jsonl", "2026/11/02.jsonl", "2026/11/03.jsonl"]

    # 10 orders in batches of 4, cut across the files: 3 batches.
    assert final(widget(nb, code_cell(nb, "job"))) == succeeded(3)
    assert result(code_cell(nb, "job.wait()")) == "succeeded"
    outputs = code_cell(nb, "totals")
    assert "3 parts, 10 orders" in text(outputs)
    totals = result(outputs)
    assert [t["order"] for t in totals] == list(range(1, 11))
    assert {t["order"]: t["total"] for t in totals if t["order"] <= 5} == {
        1: 12.5,
        2: 12,
        3: 3,
        4: 0,
        5: 42.5,  # the value written over several lines
    }
    assert {t["currency"] for t in totals} == {"EUR"}
    assert "S3 server stopped:" in text(code_cell(nb, "server.wait(timeout=10))"))


def test_existing_cluster(kernel_specs):
    nb = execute(kernel_specs, "03-existing-cluster", after=[SETTLE])
    assert "LocalCluster" in html(code_cell(nb, "client"))
    job = widget(nb, code_cell(nb, "job"))
    assert final(job) == succeeded(10)
    assert "2 workers" in job["html"]
    assert result(code_cell(nb, "job.wait()")) == "succeeded"
    after = code_cell(nb, "client.submit(sum, [1, 2, 3]).result()")
    assert "batches: 10 succeeded; job workers: 2" in text(after)
    assert "cluster workers: 2" in text(after)
    assert result(after) == 6


def test_failures_and_retry(kernel_specs):
    nb = execute(kernel_specs, "04-failures-and-resume", after=[SETTLE])
    job = widget(nb, code_cell(nb, "job"))
    assert final(job) == {
        "status": "✗ completed_with_failures",
        "percent": 100,  # every batch is final: 8 succeeded, 2 in the dead letter
        "counts": "8 succeeded / 2 dead-lettered / 4 failed attempts / 10 batches",
        "red": 20.0,
    }
    assert result(code_cell(nb, "job.wait()")) == "completed_with_failures"
    metrics = result(code_cell(nb, "job.metrics"))
    assert (metrics["succeeded"], metrics["failed"], metrics["dead_lettered"]) == (8, 4, 2)

    frame = code_cell(nb, 'dead[["batch_id", "payload", "error", "attempts"]]')
    table = html(frame)
    assert re.findall(r"<th>(\d+)</th>", table) == ["0", "1"]  # a row per dead-lettered batch
    assert "[2, 3]" in table and "[12, 13]" in table
    assert "<td>ServiceUnavailable: service unavailable" in table
    assert f"{job['job_id']}-000001" in table and f"{job['job_id']}-000006" in table
    traceback = text(code_cell(nb, 'print(dead.loc[0, "traceback"])'))
    assert traceback.startswith("Traceback (most recent call last)")
    assert "ServiceUnavailable: service unavailable for item 3" in traceback

    retry = widget(nb, code_cell(nb, "retry"))
    assert final(retry) == succeeded(2)
    assert retry["job_id"] != job["job_id"]
    assert result(code_cell(nb, "retry.wait()")) == "succeeded"
    retried = code_cell(nb, "retry.metrics")
    assert f"retry of: {job['job_id']}" in text(retried)
    assert (result(retried)["succeeded"], result(retried)["failed"]) == (2, 0)


# --- what nbconvert users see: no settling cell (need package changes) ---------------------

# Test only: a display that redraws every 30 s, far longer than the quickstart's job takes. The
# widget shows the final state at the end of the cell that waits only if job.wait() makes its
# displays draw the final state before it returns.
SLOW_DISPLAY = """
import functools

import dask_batchapi.api.widgets

dask_batchapi.api.widgets.progress_widget_or_text = functools.partial(
    dask_batchapi.api.widgets.progress_widget_or_text, interval=30.0
)
"""

# Test only: what the display of an ended job holds the moment it is shown, when reading the
# store is slow (as on S3): only a display drawn before it is shown holds the final values.
REATTACH_VALUES = """
import time


class SlowStoreJob(batchapi.Job):
    @property
    def status(self):
        time.sleep(0.5)
        return super().status


print(json.dumps(SlowStoreJob(c, "word-count", job.job_id).progress().values))
"""


@pytest.fixture(scope="module")
def unsettled_quickstart(kernel_specs):
    return execute(
        kernel_specs,
        "01-quickstart",
        before=[SLOW_DISPLAY],
        after=[REATTACH_VALUES],
        save_as="01-quickstart-unsettled",
    )


def test_the_widget_is_final_when_wait_returns(unsettled_quickstart):
    nb = unsettled_quickstart
    assert result(code_cell(nb, "job.wait()")) == "succeeded"
    assert final(widget(nb, code_cell(nb, "job"))) == succeeded(10)


def test_a_reattached_ended_job_shows_its_final_state_at_once(unsettled_quickstart):
    nb = unsettled_quickstart
    [printed] = [o.text for o in nb.cells[-1].outputs if o.output_type == "stream"]
    values = json.loads(printed)
    assert (values.get("label"), values.get("percent")) == ("✓ succeeded", 100)
    cell = code_cell(nb, "job.job_id, store=store)")
    assert final(widget(nb, cell)) == succeeded(10)
