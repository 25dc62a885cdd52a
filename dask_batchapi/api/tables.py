"""Plain-text tables for the CLI: rows of dicts, and the cluster's workers and job queue."""

from __future__ import annotations

import logging

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
