"""The jobs dashboard: two static pages (``/`` and ``/_/job``) and the JSON they poll.

The pages are plain HTML and JavaScript shipped in ``static/`` (no build step). They draw every
value with ``textContent`` (never as HTML: payloads, errors and log lines are user data) under a
Content-Security-Policy that allows only the service's own scripts and styles.

JSON under ``/_/`` (the prefix no API name can take):

- ``GET /_/overview``: every API with its newest jobs as rows (:func:`job_row`)
- ``GET /_/jobs/<api>/<id>``: one job's row and status document
- ``GET /_/jobs/<api>/<id>/logs?after=<cursor>``: log lines after a cursor (the last
  ``batchapi.service.log-tail-lines`` when there is none), and the next cursor
- ``GET /_/jobs/<api>/<id>/dead-letter?limit=100``: the dead letter's first records
  (payload, error, traceback, attempts) and its size
- ``POST /_/jobs/<api>/<id>/retry``: a new job of the dead-lettered batches
"""

from __future__ import annotations

import logging
import time
from importlib import resources

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from dask_batchapi import config
from dask_batchapi.api.client import BatchClient
from dask_batchapi.api.progress import ProgressSnapshot
from dask_batchapi.api.service._http import in_thread
from dask_batchapi.api.service.routes import endpoint, job_object
from dask_batchapi.driver.ledger import read_logs

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/_", tags=["dashboard"])
pages = APIRouter(include_in_schema=False)

STATIC = resources.files("dask_batchapi.api.service") / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(name: str) -> Response:
    html = (STATIC / name).read_text(encoding="utf-8")
    return Response(html, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@pages.get("/")
async def index() -> Response:
    return _page("index.html")


@pages.get("/_/job")
async def job_page() -> Response:
    return _page("job.html")


def job_row(job: dict, now: float | None = None) -> dict:
    """What the dashboard shows of a job: its ``job_status`` plus progress, rate and ETA."""
    snap = ProgressSnapshot.from_status(job, now=now)
    counts = job.get("worker_counts") or {}
    return {
        "job_id": job.get("job_id"),
        "api_name": job.get("api_name"),
        "status": snap.status,
        "interrupted": snap.interrupted,
        "resume_command": snap.resume_command,
        "terminal": snap.terminal,
        "done": snap.done,
        "total": snap.total,
        "percent": snap.percent,
        "succeeded": snap.succeeded,
        "failed_attempts": snap.failed_attempts,
        "dead_lettered": snap.dead_lettered,
        "rate": snap.rate,
        "eta": snap.eta,
        "elapsed": snap.elapsed,
        "workers_asked": job.get("workers"),
        "workers_held": counts.get("running"),
        "queue_position": job.get("queue_position"),
        "created_time": job.get("created_time"),
        "start_time": job.get("start_time"),
        "end_time": job.get("end_time"),
        "error": snap.error,
        "dashboard_link": snap.dashboard_link,
    }


def overview(client: BatchClient) -> dict:
    limit = int(config.get("service.dashboard-jobs"))
    now = time.time()
    apis = []
    for api in client.list_apis():
        rows = [job_row(j, now) for j in client.list_jobs(api.name, limit, skip_unreadable=True)]
        apis.append(
            {"name": api.name, "deployed_time": api.record.get("deployed_time"), "jobs": rows}
        )
    return {"apis": apis, "time": now}


@router.get("/overview", summary="Every API and its newest jobs (the dashboard's list)")
async def get_overview(request: Request) -> dict:
    return await in_thread(overview, request.app.state.client)


@router.get("/jobs/{api_name}/{job_id}", summary="One job for the dashboard's job page")
async def get_job(request: Request, api_name: str, job_id: str) -> dict:
    client: BatchClient = request.app.state.client
    doc = await in_thread(lambda: client.get_job(api_name, job_id).status)
    doc["endpoint"] = endpoint(request, api_name)
    return {"row": job_row(doc["job_status"]), "status": doc}


def _logs(client: BatchClient, api_name: str, job_id: str, after: str | None) -> dict:
    client.get_job(api_name, job_id)  # JobNotFound before reading segments
    lines, cursor = read_logs(client.store, api_name, job_id, after)
    if after is None:
        lines = lines[-int(config.get("service.log-tail-lines")) :]
    return {"lines": lines, "after": cursor}


@router.get("/jobs/{api_name}/{job_id}/logs", summary="A job's log lines after a cursor")
async def get_logs(
    request: Request, api_name: str, job_id: str, after: str | None = Query(None)
) -> dict:
    return await in_thread(_logs, request.app.state.client, api_name, job_id, after)


@router.get("/jobs/{api_name}/{job_id}/dead-letter", summary="A job's dead-lettered batches")
async def get_dead_letter(
    request: Request, api_name: str, job_id: str, limit: int = Query(100, ge=1)
) -> dict:
    """The first ``limit`` records (payload, error, traceback, attempts) and how many there are."""
    records = await in_thread(request.app.state.client.dead_letter, api_name, job_id)
    return {"total": len(records), "records": records[:limit]}


@router.post("/jobs/{api_name}/{job_id}/retry", summary="Retry a job's dead-lettered batches")
async def retry(request: Request, api_name: str, job_id: str) -> dict:
    client: BatchClient = request.app.state.client
    job = await in_thread(client.retry_job, api_name, job_id)
    logger.info("retry of job %s of %s: job %s", job_id, api_name, job.job_id)
    return await in_thread(job_object, job)
