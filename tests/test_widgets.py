"""Progress display: snapshot math, the summary line, the text bar, the notebook widget.

Status documents are built in the store's shape and fed through a poll function that walks a
scripted sequence, as a job would move through its states.
"""

from __future__ import annotations

import io
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dask_batchapi.api.progress import ProgressSnapshot, format_summary
from dask_batchapi.api.widgets import (
    TextProgress,
    WidgetProgress,
    progress_widget_or_text,
    status_html,
)

START = "2026-11-27T03:10:18.000000Z"
T0 = datetime(2026, 11, 27, 3, 10, 18, tzinfo=timezone.utc).timestamp()


def status_doc(
    status="running",
    succeeded=0,
    failed=0,
    dead_lettered=0,
    total=500,
    end=None,
    error=None,
    dashboard_link="http://127.0.0.1:8787/status",
    interrupted=False,
    resume_command=None,
    api_name="my-api",
):
    return {
        "job_status": {
            "job_id": "1f3a0c9e",
            "api_name": api_name,
            "kind": "BatchAPI",
            "workers": 2,
            "status": status,
            "created_time": "2026-11-27T03:10:17.123456Z",
            "start_time": START,
            "end_time": end,
            "total_batch_count": total,
            "batches_in_queue": 0,
            "batch_metrics": {
                "succeeded": succeeded,
                "failed": failed,
                "average_time_per_batch": 0.0123,
                "dead_lettered": dead_lettered,
                "lost": 0,
            },
            "worker_counts": {"pending": 0, "initializing": 0, "running": 2},
            "error": error,
            "dashboard_link": dashboard_link,
            "interrupted": interrupted,
            "resume_command": resume_command,
        },
        "api_spec": {"name": api_name, "kind": "BatchAPI"},
    }


def scripted(*docs):
    """A poll function that returns ``docs`` in order, then the last one forever."""
    remaining = list(docs)

    def poll():
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return poll


def successful_job():
    return scripted(
        status_doc("pending", total=None),
        status_doc("enqueuing", total=None),
        status_doc(succeeded=120, failed=3),
        status_doc(succeeded=370, failed=12),
        status_doc("succeeded", succeeded=500, failed=12, end="2026-11-27T03:10:20.500000Z"),
    )


def failed_job():
    return scripted(
        status_doc(succeeded=10),
        status_doc(
            "worker_error",
            succeeded=10,
            end="2026-11-27T03:10:19.000000Z",
            error={"type": "HandlerError", "message": "Handler.__init__ raised <KeyError 'x'>"},
        ),
    )


# --- snapshot math -------------------------------------------------------------------------


def test_first_snapshot_uses_the_average_since_start():
    s = ProgressSnapshot.from_status(status_doc(succeeded=96, dead_lettered=4), now=T0 + 10)
    assert (s.done, s.succeeded, s.dead_lettered, s.total) == (100, 96, 4, 500)
    assert s.elapsed == pytest.approx(10)
    assert s.rate == pytest.approx(10)
    assert s.eta == pytest.approx(40)
    assert (s.terminal, s.ok, s.workers, s.percent) == (False, False, 2, 20)


def test_rate_is_smoothed_over_recent_snapshots():
    s1 = ProgressSnapshot.from_status(status_doc(succeeded=100), now=T0 + 10)
    s2 = ProgressSnapshot.from_status(status_doc(succeeded=140), s1, now=T0 + 12)
    assert s2.rate == pytest.approx(20)  # (140 - 100) / 2 s
    assert s2.eta == pytest.approx(18)
    s3 = ProgressSnapshot.from_status(status_doc(succeeded=140), s2, now=T0 + 12.5)
    assert s3.rate == pytest.approx(40 / 2.5)  # a poll without news lowers it, gently
    s4 = ProgressSnapshot.from_status(status_doc(succeeded=400), s3, now=T0 + 30)
    # Samples older than the window are dropped, all but the one opening it (t=12.5).
    assert s4.rate == pytest.approx((400 - 140) / 17.5)


def test_polls_closer_than_a_second_keep_the_previous_rate():
    s1 = ProgressSnapshot.from_status(status_doc(succeeded=100), now=T0 + 10)
    s2 = ProgressSnapshot.from_status(status_doc(succeeded=180), s1, now=T0 + 10.25)
    assert s2.rate == pytest.approx(10)


def test_unknown_total_has_no_eta_and_no_percent():
    s = ProgressSnapshot.from_status(status_doc("enqueuing", succeeded=5, total=None), now=T0 + 1)
    assert (s.total, s.eta, s.percent) == (None, None, None)
    assert s.rate == pytest.approx(5)
    assert format_summary(s).startswith("enqueuing  5/? batches  0 failed attempts")


def test_final_snapshot_uses_end_time_and_overall_rate():
    doc = status_doc("succeeded", succeeded=500, end="2026-11-27T03:10:20.500000Z")
    s = ProgressSnapshot.from_status(doc, now=T0 + 3600)
    assert s.elapsed == pytest.approx(2.5)
    assert s.rate == pytest.approx(200)
    assert (s.eta, s.terminal, s.ok, s.percent) == (None, True, True, 100)


def test_interrupted_job_is_terminal_and_says_how_to_resume():
    doc = status_doc(
        succeeded=10, interrupted=True, resume_command="dask-batchapi resume my-api 1f3a0c9e"
    )
    s = ProgressSnapshot.from_status(doc, now=T0 + 5)
    assert (s.terminal, s.ok, s.interrupted) == (True, False, True)
    line = format_summary(s)
    assert line.startswith("✗ interrupted (running)")
    assert line.endswith("resume with: dask-batchapi resume my-api 1f3a0c9e")


# --- format_summary ------------------------------------------------------------------------


def test_summary_of_a_running_job():
    s = ProgressSnapshot.from_status(status_doc(succeeded=370, failed=12), now=T0 + 2)
    assert format_summary(s) == (
        "running  370/500 batches  12 failed attempts  185.0 batches/s  elapsed 2.0s  ETA 0.7s"
        "  2 workers"
    )


def test_summary_of_a_succeeded_job():
    doc = status_doc("succeeded", succeeded=500, end="2026-11-27T03:10:20.400000Z")
    assert format_summary(ProgressSnapshot.from_status(doc)) == (
        "✓ succeeded  500/500 batches  0 failed attempts  208.3 batches/s  elapsed 2.4s  2 workers"
    )


def test_summary_of_a_job_completed_with_failures():
    doc = status_doc(
        "completed_with_failures",
        succeeded=496,
        failed=12,
        dead_lettered=4,
        end="2026-11-27T03:12:23.000000Z",
    )
    assert format_summary(ProgressSnapshot.from_status(doc)) == (
        "✗ completed_with_failures  500/500 batches  4 dead-lettered  12 failed attempts"
        "  4.0 batches/s  elapsed 2m 05s  2 workers"
    )


def test_summary_of_a_worker_error_carries_the_error_on_one_line():
    doc = status_doc(
        "worker_error",
        end="2026-11-27T03:10:19.000000Z",
        error={"type": "HandlerError", "message": "Handler.__init__ raised\nKeyError: 'model'"},
    )
    line = format_summary(ProgressSnapshot.from_status(doc))
    assert line.startswith("✗ worker_error  0/500 batches  0 failed attempts")
    assert line.endswith("error: HandlerError: Handler.__init__ raised KeyError: 'model'")
    assert "\n" not in line


# --- TextProgress --------------------------------------------------------------------------


def test_text_progress_on_a_pipe_ends_with_the_summary_line():
    out = io.StringIO()
    progress = TextProgress(successful_job(), interval=0.001, file=out)
    final = progress.run()
    assert final["job_status"]["status"] == "succeeded"
    lines = out.getvalue().splitlines()
    # Not a TTY: one progress line (the rest fall within line_interval), then the summary.
    assert len(lines) == 2
    assert "\r" not in out.getvalue()
    assert lines[-1] == format_summary(progress.last_snapshot)
    assert lines[-1].startswith("✓ succeeded  500/500 batches  12 failed attempts")


def test_text_progress_on_a_pipe_writes_a_line_per_interval_when_things_change():
    out = io.StringIO()
    docs = [status_doc(succeeded=n) for n in range(0, 500, 100)]
    docs.append(status_doc("succeeded", succeeded=500, end="2026-11-27T03:10:21.000000Z"))
    TextProgress(scripted(*docs), interval=0.03, file=out, line_interval=0.01).run()
    lines = out.getvalue().splitlines()
    assert [line.split("|")[2].split(",")[0] for line in lines[:-1]] == [
        f" {n}/500 batches" for n in range(0, 500, 100)
    ]
    assert lines[-1].startswith("✓ succeeded")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_text_progress_on_a_terminal_learns_the_total_when_it_is_known():
    out = _Terminal()
    progress = TextProgress(successful_job(), interval=0.001, file=out, desc="my-api")
    progress.run()
    text = out.getvalue()
    assert "0/? batches" in text  # enqueuing: total not known yet
    assert "100%" in text and "500/500 batches" in text
    assert text.splitlines()[-1].startswith("✓ succeeded  500/500 batches")


def test_text_progress_survives_an_ascii_only_pipe():
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    TextProgress(failed_job(), interval=0.001, file=out).run()
    assert raw.getvalue().decode("ascii").splitlines()[-1].startswith("? worker_error")


def test_the_final_draw_uses_the_document_after_the_terminal_one():
    # The store may say "succeeded" a moment before its last metrics land: end on those.
    poll = scripted(
        status_doc(succeeded=300),
        status_doc("succeeded", succeeded=499, end="2026-11-27T03:10:20.000000Z"),
        status_doc("succeeded", succeeded=500, end="2026-11-27T03:10:20.000000Z"),
    )
    out = io.StringIO()
    final = TextProgress(poll, interval=0.001, file=out).run()
    assert final["job_status"]["batch_metrics"]["succeeded"] == 500
    assert out.getvalue().splitlines()[-1].startswith("✓ succeeded  500/500 batches")


# --- WidgetProgress ------------------------------------------------------------------------


def test_widget_ends_at_100_percent_with_a_tick_and_the_counts():
    progress = WidgetProgress(successful_job(), interval=0.001)
    progress.run()
    assert progress.values == {
        "status": "succeeded",
        "label": "✓ succeeded",
        "succeeded": 500,
        "failed_attempts": 12,
        "dead_lettered": 0,
        "items_succeeded": 0,  # a document without item_metrics (written before them)
        "items_dead_lettered": 0,
        "items_not_attempted": None,
        "done": 500,
        "total": 500,
        "percent": 100,
        "terminal": True,
        "ok": True,
        "error": None,
    }
    assert "✓ succeeded" in progress.status.value
    assert 'class="batchapi-status"' in progress.status.value
    assert 'aria-valuenow="100"' in progress.bar.value
    assert '<span class="batchapi-percent">100%</span>' in progress.bar.value
    assert "500 succeeded / 12 failed attempts / 500 batches" in progress.counts.value
    assert '<a href="http://127.0.0.1:8787/status"' in progress.details.value
    assert "batchapi-progress" in progress.widget._dom_classes


def test_widget_and_summary_show_per_item_outcomes():
    doc = status_doc("completed_with_failures", succeeded=20, end="2026-11-27T03:10:20.000000Z")
    doc["job_status"]["item_metrics"] = {"succeeded": 998, "dead_lettered": 2, "not_attempted": 0}
    progress = WidgetProgress(scripted(doc), interval=0.001)
    progress.run()
    assert progress.values["items_dead_lettered"] == 2
    items = "items: 998 succeeded, 2 dead-lettered, 0 not attempted"
    assert f'<span class="batchapi-items">{items}</span>' in progress.counts.value
    assert items in format_summary(progress.last_snapshot)


def test_widget_shows_a_cross_and_the_status_of_a_failed_job():
    progress = WidgetProgress(failed_job(), interval=0.001)
    progress.run()
    assert progress.values["label"] == "✗ worker_error"
    assert progress.values["ok"] is False
    assert "✗ worker_error" in progress.status.value
    assert "HandlerError: Handler.__init__ raised &lt;KeyError &#x27;x&#x27;&gt;" in (
        progress.details.value
    )


def test_widget_bar_has_a_red_part_for_dead_lettered_batches():
    doc = status_doc(
        "completed_with_failures", succeeded=496, dead_lettered=4, end=START, failed=12
    )
    progress = WidgetProgress(scripted(doc), interval=0.001)
    progress.run()
    assert progress.values["dead_lettered"] == 4
    assert 'class="batchapi-bar-succeeded" style="width:99.20%' in progress.bar.value
    assert 'class="batchapi-bar-dead-lettered" style="width:0.80%' in progress.bar.value
    assert "✗ completed_with_failures" in progress.status.value


def test_start_returns_at_once_and_the_thread_ends_by_itself():
    gate = threading.Event()
    docs = successful_job()

    def slow_first_poll():
        gate.wait(5)
        return docs()

    progress = WidgetProgress(slow_first_poll, interval=0.001)
    began = time.monotonic()
    progress.start()
    assert time.monotonic() - began < 0.5
    assert progress.last_snapshot is None  # the first poll is still blocked
    gate.set()
    assert progress.join(timeout=5)
    assert progress.values["label"] == "✓ succeeded"
    assert progress.exception is None


def test_stop_ends_the_loop_of_a_job_that_never_ends():
    out = _Terminal()
    progress = TextProgress(scripted(status_doc(succeeded=1)), interval=0.01, file=out)
    progress.start()
    progress.stop()
    assert progress.join(timeout=5)
    assert progress.last_snapshot.terminal is False
    assert out.getvalue().endswith("\n")  # the bar's line is ended, no summary claimed
    assert "✓" not in out.getvalue()


def test_a_failing_poll_ends_the_thread_and_is_kept():
    def poll():
        raise OSError("store unreachable")

    progress = TextProgress(poll, interval=0.01, file=io.StringIO())
    progress.start()
    assert progress.join(timeout=5)
    assert isinstance(progress.exception, OSError)


def test_outside_a_kernel_the_text_progress_is_chosen():
    assert isinstance(progress_widget_or_text(successful_job()), TextProgress)


# --- status_html ---------------------------------------------------------------------------


def test_status_html_escapes_every_value():
    doc = status_doc(
        "worker_error",
        api_name="<img src=x onerror=alert(1)>",
        error={"type": "ValueError", "message": "<script>alert('x')</script> & more"},
        dashboard_link='http://h:8787/status" onmouseover="alert(1)',
    )
    html = status_html(doc)
    assert "<img" not in html and "<script>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in html
    assert 'href="http://h:8787/status&quot; onmouseover=&quot;alert(1)"' in html
    assert "✗ worker_error" in html


def test_status_html_never_links_a_javascript_url():
    html = status_html(status_doc(dashboard_link="javascript:alert(1)"))
    assert "href=" not in html
    assert "dashboard javascript:alert(1)" in html


def test_status_html_of_a_succeeded_job():
    doc = status_doc("succeeded", succeeded=500, end="2026-11-27T03:10:20.400000Z")
    html = status_html(doc)
    assert html.startswith('<div class="batchapi-progress">')
    assert '<span class="batchapi-percent">100%</span>' in html
    assert "✓ succeeded" in html and "500 succeeded / 0 failed attempts / 500 batches" in html


# --- in a real Jupyter kernel --------------------------------------------------------------

_NOTEBOOK_CODE = """
import sys
sys.path.insert(0, {root!r})
from dask_batchapi.api.widgets import progress_widget_or_text
docs = [{{"job_status": {{"status": "running", "total_batch_count": 4,
                         "batch_metrics": {{"succeeded": n}}}}}} for n in range(4)]
docs.append({{"job_status": {{"status": "succeeded", "total_batch_count": 4,
                            "batch_metrics": {{"succeeded": 4}}}}}})
def poll():
    return docs.pop(0) if len(docs) > 1 else docs[0]
progress = progress_widget_or_text(poll, interval=0.01)
print(type(progress).__name__)
progress
"""


def test_in_a_kernel_the_widget_is_displayed_and_updated_from_its_thread():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    root = str(Path(__file__).resolve().parents[1])
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(_NOTEBOOK_CODE.format(root=root)),
        nbformat.v4.new_code_cell("assert progress.join(30), progress.exception"),
    ]
    nbclient.NotebookClient(nb, timeout=60, store_widget_state=True).execute()
    outputs = nb.cells[0].outputs
    assert outputs[0]["text"] == "WidgetProgress\n"
    assert "application/vnd.jupyter.widget-view+json" in outputs[1]["data"]
    # The saved widget state is what the browser received over the comms, from the thread.
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    values = [model["state"].get("value", "") for model in state.values()]
    assert any("✓ succeeded" in v and "batchapi-status" in v for v in values)
    assert any('<span class="batchapi-percent">100%</span>' in v for v in values)
