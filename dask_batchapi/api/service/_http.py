"""HTTP plumbing of the service: bounded body reading and errors as ``{"kind", "message"}``.

Our errors map to status codes by class (:data:`STATUS`); anything else is a bug: it is logged
here with its traceback and the client gets a 500 with one generic line, never the traceback.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from dask_batchapi import config
from dask_batchapi.errors import (
    BatchAPIError,
    ClusterError,
    JobStateError,
    NotFound,
    RequestTooLarge,
    SourceError,
    SpecError,
    StoreError,
    SubmissionError,
)

logger = logging.getLogger(__name__)

#: HTTP status of each of our errors (the first class in the error's MRO that is listed wins).
STATUS: dict[type[BatchAPIError], int] = {
    RequestTooLarge: 413,
    SubmissionError: 400,
    SpecError: 400,
    SourceError: 400,
    NotFound: 404,
    JobStateError: 409,
    ClusterError: 503,
    StoreError: 503,
}
_HTTP_KINDS = {404: "NotFound", 405: "MethodNotAllowed", 413: "RequestTooLarge"}


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"kind": kind, "message": message}, status_code=status)


async def our_error(request: Request, exc: BatchAPIError) -> JSONResponse:
    status = next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 400)
    return error_response(status, type(exc).__name__, str(exc))


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = _HTTP_KINDS.get(exc.status_code, "HTTPError")
    message = exc.detail
    if exc.status_code == 404:
        message = f"no route {request.url.path}: see /openapi.json"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return JSONResponse(
        {"kind": kind, "message": message}, status_code=exc.status_code, headers=exc.headers
    )


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(400, "BadRequest", f"{where}: {first.get('msg', 'invalid')}")


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "InternalError", "internal error; the service's log has details")


async def read_body(request: Request, limit: int | None = None) -> bytes:
    """The request body, refused (RequestTooLarge) as soon as it is known to pass ``limit``:
    from ``Content-Length`` before reading, else while reading; never buffered past it."""
    limit = int(config.get("service.max-body-bytes")) if limit is None else limit
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(_too_large(int(declared), limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(_too_large(size, limit, at_least=True))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    over = "over " if at_least else ""
    return f"request body is {over}{size} bytes; the limit is {limit} (batchapi.service.max-body-bytes)"


def parse_json(body: bytes) -> Any:
    """The body as JSON; SubmissionError with the CLI's one-line message when it is not."""
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise SubmissionError("request body: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        msg = f"request body: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        raise SubmissionError(msg) from None


def flag(value: str | None, name: str) -> bool:
    """A boolean query parameter (``true``/``false``, any case; absent: false)."""
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise SubmissionError(f"query parameter {name} must be true or false, got {value!r}")


async def in_thread(fn, *args: Any, **kwargs: Any) -> Any:
    """Run blocking store or cluster work off the event loop."""
    return await run_in_threadpool(fn, *args, **kwargs)
