"""The service's ASGI application: FastAPI routes behind the token middleware.

Route layout, so that no API name can shadow a service route: ``/`` (the dashboard),
``/metrics`` and ``/healthz`` (names that ``deploy`` refuses for an API: see
``spec.api_spec.RESERVED_NAMES``), ``/openapi.json`` (a dot: no API name has one), and
everything else under ``/_/`` (no API name starts with ``_``). Every other ``/<name>`` is a
deployed API's Cortex routes.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from dask_batchapi.api.client import BatchClient
from dask_batchapi.api.service import _http, dashboard, metrics, routes
from dask_batchapi.api.service.auth import TokenAuth
from dask_batchapi.errors import BatchAPIError

logger = logging.getLogger(__name__)


def create_fastapi(client: BatchClient) -> FastAPI:
    """The routes, without authentication (:func:`create_app` adds it)."""
    app = FastAPI(
        title="dask-batchapi job service",
        summary="Cortex's Batch API job routes, a jobs dashboard and Prometheus metrics",
        version=_version(),
        docs_url="/_/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.client = client
    app.state.metrics = metrics.registry_for(client)
    app.add_exception_handler(BatchAPIError, _http.our_error)
    app.add_exception_handler(HTTPException, _http.http_error)
    app.add_exception_handler(RequestValidationError, _http.validation_error)
    app.add_exception_handler(Exception, _http.unexpected_error)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["service"])
    app.add_api_route("/metrics", metrics_route, methods=["GET"], tags=["service"])
    app.mount("/_/static", StaticFiles(directory=str(dashboard.STATIC)), name="static")
    app.include_router(dashboard.pages)
    app.include_router(dashboard.router)
    app.include_router(routes.router)  # last: /{api_name} matches any single segment
    return app


def create_app(client: BatchClient, token: str, cookie_name: str, secure: bool = False) -> Any:
    """The service as an ASGI app: :func:`create_fastapi` behind :class:`TokenAuth`."""
    return TokenAuth(create_fastapi(client), token, cookie_name, secure)


async def healthz() -> dict:
    """``{"status": "ok"}`` while the service answers (it does not probe the store)."""
    return {"status": "ok"}


async def metrics_route(request: Request) -> Response:
    """Prometheus' text format, read from the store at each scrape."""
    body = await _http.in_thread(metrics.render, request.app.state.metrics)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dask-batchapi")
    except PackageNotFoundError:
        return "0"
