"""Cortex's job routes, one set per deployed API, over :class:`~dask_batchapi.api.client.BatchClient`.

=========================================  =================================================
``POST /<api>``                            submit (Cortex's JSON) -> the job object
``POST /<api>?dryRun=true``                text: one matched URL a line, ``validations passed``
``GET /<api>?jobID=<id>``                  the status document, with ``endpoint``
``DELETE /<api>?jobID=<id>``               ``{"message": "stopped job <id>"}``
``GET /<api>``                             the API's jobs (``job_status`` parts), newest first
=========================================  =================================================
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query, Request
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse

from dask_batchapi.api.client import BatchClient, Job
from dask_batchapi.api.service._http import flag, in_thread, parse_json, read_body
from dask_batchapi.spec.api_spec import RESERVED_NAMES

logger = logging.getLogger(__name__)

router = APIRouter(tags=["Cortex job API"])

_SUBMISSION_BODY = {
    "requestBody": {
        "required": True,
        "description": "Cortex's job submission (item_list, file_path_lister or delimited_files)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


def _client(request: Request, api_name: str) -> BatchClient:
    """The client; a service route's name (``POST /metrics``) is a wrong method, not an API."""
    if api_name in RESERVED_NAMES:
        raise HTTPException(405)
    return request.app.state.client


def endpoint(request: Request, api_name: str) -> str:
    """This API's URL on the service (what Cortex reports as the job's ``endpoint``)."""
    return str(request.base_url).rstrip("/") + "/" + api_name


def job_object(job: Job) -> dict:
    """Cortex's job object: the record's fields, ``total_batch_count`` when known, and
    ``start_time`` (the submission time, as Cortex has it at submit)."""
    record = job.client.store.get_job(job.api_name, job.job_id)
    fields = record.job_fields()
    fields["start_time"] = record.created_time
    if record.known_batch_count is not None:
        fields["total_batch_count"] = record.known_batch_count
    return fields


@router.post("/{api_name}", openapi_extra=_SUBMISSION_BODY, summary="Submit a job")
async def submit(
    request: Request, api_name: str, dry_run: str | None = Query(None, alias="dryRun")
):
    client = _client(request, api_name)
    dry = flag(dry_run, "dryRun")
    submission = parse_json(await read_body(request))
    if dry:
        urls = await in_thread(client.dry_run, api_name, submission)
        return PlainTextResponse("".join(f"{u}\n" for u in urls) + "validations passed\n")
    job = await in_thread(client.submit, api_name, submission)
    logger.info("submitted job %s of %s", job.job_id, api_name)
    return await in_thread(job_object, job)


@router.get("/{api_name}", summary="A job's status document, or the API's jobs")
async def get_jobs(
    request: Request,
    api_name: str,
    job_id: str | None = Query(None, alias="jobID"),
    limit: int | None = Query(None, ge=1),
):
    client = _client(request, api_name)
    if job_id is None:
        return await in_thread(client.list_jobs, api_name, limit)
    doc = await in_thread(lambda: client.get_job(api_name, job_id).status)
    doc["endpoint"] = endpoint(request, api_name)
    return doc


@router.delete("/{api_name}", summary="Stop a job")
async def stop(request: Request, api_name: str, job_id: str = Query(..., alias="jobID")):
    await in_thread(_client(request, api_name).stop_job, api_name, job_id)
    logger.info("stop requested for job %s of %s", job_id, api_name)
    return {"message": f"stopped job {job_id}"}
