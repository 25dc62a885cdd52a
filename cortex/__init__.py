"""Cortex's ``cortex`` module, on dask-batchapi: ``cortex.client()`` for handlers and scripts.

Cortex's handlers (and scripts) do::

    import cortex

    class Handler:
        def on_job_complete(self):
            client = cortex.client()            # this job's own store and cluster
            client.submit("next-stage", {...})  # or client.create_api(api_spec, project_dir=...)

:func:`client` returns a :class:`dask_batchapi.BatchClient`, which has Cortex's client names
(``create_api``, ``get_api``, ``list_apis``, ``get_job``, ``stop_job``, ``delete_api``,
``stream_job_logs``) beside its own. This module is only a name: there is no second client.

* inside handler code (``__init__``, ``handle_batch``, ``on_job_complete``) and no ``env``: the
  job's own store and cluster; a job submitted there records ``triggered_by`` (its parent);
* elsewhere and no ``env``: the default store and cluster (``DASK_BATCHAPI_STORE``, ...);
* ``env``: a named environment of dask config ``batchapi.environments``.

Importing this module is cheap (dask-batchapi is imported on the first call), so the handler
check at deploy stays fast. The Cortex CLI package (``pip install cortex``) also provides a
top-level ``cortex``; dask-batchapi warns once when both are installed (docs/cortex-client.md).
"""

from __future__ import annotations

from typing import Any

from cortex import client as _client_module  # noqa: F401 - ``cortex.client.Client``, as Cortex

__all__ = ["Client", "client"]


def client(env: str | None = None) -> Any:
    """A client of the named environment, or of this job's / the default store and cluster.

    Parameters
    ----------
    env : str, optional
        A name in dask config ``batchapi.environments``; an unknown name raises
        ``dask_batchapi.EnvironmentNotFound``.

    Returns
    -------
    dask_batchapi.BatchClient

    >>> import cortex
    >>> cx = cortex.client()        # doctest: +SKIP
    >>> cx.list_apis()              # doctest: +SKIP
    """
    from dask_batchapi.api.client import client as batchapi_client

    return batchapi_client(env)


def __getattr__(name: str) -> Any:
    if name == "Client":
        from dask_batchapi.api.client import BatchClient

        return BatchClient
    raise AttributeError(f"module 'cortex' has no attribute {name!r}")
