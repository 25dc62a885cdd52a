"""What the CLI prints: plain-text tables of APIs, jobs, a job's detail, the dead letter, and
the cluster's workers and job queue. The CLI only chooses between them and JSON."""

from __future__ import annotations

import logging
import time

from dask_batchapi.status import JobStatus, parse_iso

logger = logging.getLogger(__name__)


def table(rows: list[dict]) -> str:
    """Left-aligned columns under the rows' keys."""
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]

    def fmt_row(values):
        return "   ".join(str(v).ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([fmt_row(headers), *(fmt_row([r[h] for h in headers]) for r in rows)])


def cluster_text(status: dict) -> str:
    """``BatchClient.cluster_status()`` as text: each worker and its job, then the queue."""
    if status["scheduler"] is None:
        return "no local cluster is running"
    workers = [
        {
            "worker": w["address"],
            "state": w["state"],
            "job id": w["job_id"] or "-",
            "api": w["api_name"] or "-",
        }
        for w in status["workers"]
    ]
    lines = [f"scheduler: {status['scheduler']}", table(workers) if workers else "no workers"]
    jobs = [
        {
            "job id": j["job_id"],
            "api": j["api_name"],
            "priority": j["priority"],
            "workers": f"{j['held']}/{j['asked']}",
            "queue": j["queue_position"] or "-",
        }
        for j in status["jobs"]
    ]
    if jobs:
        lines += ["", table(jobs)]
    return "\n".join(lines)


def api_rows(apis: list) -> list[dict]:
    """``get``'s table of APIs: running jobs, the latest job, when it was deployed."""
    rows = []
    for api in apis:
        if api.record.get("unreadable"):
            error = f"unreadable: {api.record['error']}"
            rows.append(
                {"api": api.name, "running jobs": "?", "latest job id": "-", "last update": error}
            )
            continue
        jobs = api.jobs()
        rows.append(
            {
                "api": api.name,
                "running jobs": sum(1 for j in jobs if _active(j)),
                "latest job id": jobs[0]["job_id"] if jobs else "-",
                "last update": api.record["deployed_time"],
            }
        )
    return rows


def job_rows(jobs: list[dict]) -> list[dict]:
    """``get API``'s table of jobs: status, progress, held/asked workers, queue position."""
    return [
        {
            "job id": j["job_id"],
            "status": _status_text(j),
            "progress": f"{j['batch_metrics']['succeeded']}/{j['total_batch_count'] or '?'}",
            "failed": j["batch_metrics"]["failed"],
            "workers": _workers_text(j),
            "queue": j.get("queue_position") or "-",
            "start time": j["start_time"] or "-",
            "duration": _duration(j),
        }
        for j in jobs
    ]


def _active(j: dict) -> bool:
    return not j.get("unreadable") and not JobStatus(j["status"]).is_terminal


def _workers_text(j: dict) -> str:
    """Held/asked workers of a job: the cluster may give it fewer than it asked for."""
    held = (j.get("worker_counts") or {}).get("running", "?")
    return f"{held}/{j.get('workers', '?')}"


def _status_text(j: dict) -> str:
    return f"{j['status']} (interrupted)" if j.get("interrupted") else j["status"]


def _duration(j: dict) -> str:
    start = parse_iso(j.get("start_time"))
    if start is None:
        return "-"
    end = parse_iso(j.get("end_time")) or time.time()
    return f"{end - start:.1f}s"


def job_detail(j: dict) -> str:
    m = j["batch_metrics"]
    avg = m["average_time_per_batch"]
    lines = [
        f"job id: {j['job_id']}",
        f"status: {_status_text(j)}",
        f"start time: {j['start_time'] or '-'}",
        f"end time: {j['end_time'] or '-'}",
        f"duration: {_duration(j)}",
        "",
        table(
            [
                {
                    "total": j["total_batch_count"] if j["total_batch_count"] is not None else "?",
                    "succeeded": m["succeeded"],
                    "failed attempts": m["failed"],
                    "dead lettered": m["dead_lettered"],
                    "lost": m["lost"],
                    "avg time per batch": f"{avg * 1000:.1f}ms" if avg is not None else "-",
                }
            ]
        ),
        "",
        f"workers: {j['worker_counts']['running']} held / {j['workers']} asked",
    ]
    items = j.get("item_metrics")
    if items:
        missing = "?" if items.get("not_attempted") is None else items["not_attempted"]
        lines.insert(
            -1,
            f"items: {items['succeeded']} succeeded, {items['dead_lettered']} dead-lettered, "
            f"{missing} not attempted",
        )
        lines.insert(-1, "")
    if j.get("custom_metrics"):
        lines += ["", "custom metrics:", table([_metric_row(m) for m in j["custom_metrics"]])]
    lines += _trigger_lines(j)
    if j.get("queue_position"):
        lines.append(f"queue position: {j['queue_position']} (waiting for a free worker)")
    if j.get("error"):
        lines.append(f"error: {j['error'].get('message')}")
    if j.get("interrupted"):
        lines.append(f"the job's driver died; resume it: {j['resume_command']}")
    return "\n".join(lines)


def _metric_row(m: dict) -> dict:
    tags = ",".join(f"{k}:{v}" for k, v in m["tags"].items()) or "-"
    if m["type"] == "histogram":
        value = f"count={m['count']} sum={m['sum']:g} min={m['min']:g} max={m['max']:g}"
    else:
        value = f"{m['value']:g}"
    return {"name": m["name"], "type": m["type"], "tags": tags, "value": value}


def _trigger_lines(j: dict) -> list[str]:
    """The jobs this one was triggered by and triggered, each with the command to see it."""
    parent = j.get("triggered_by")
    lines = [f"triggered by: {_job_link(parent)}"] if parent else []
    return lines + [f"triggered: {_job_link(child)}" for child in j.get("triggered") or ()]


def _job_link(ref: dict) -> str:
    return (
        f"{ref['api_name']} {ref['job_id']} (dask-batchapi get {ref['api_name']} {ref['job_id']})"
    )


def dead_row(record: dict, items: bool) -> dict:
    row = {"batch id": record["batch_id"]}
    if items:
        row["item"] = record.get("item_index", "-")
    return {**row, "attempts": record["attempts"], "error": record["error"][:80]}
