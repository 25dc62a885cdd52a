"""Jobs that trigger jobs: where a job submitted from handler code runs, and who drives it.

A handler may submit the next job of a pipeline (typically from ``on_job_complete``, through
``cortex.client()``). That job must run on the parent's cluster without ever waiting for the
parent's worker: the worker that submits is busy until its hook returns, so the child's driver
never runs on it. The parent's driver therefore tells its workers (the job context's
``origin``, :class:`~dask_batchapi.worker.scope.HandlerScope`) where children go:

* an existing cluster (``tcp://…``, ``tls://…``): that address. The child's driver is a detached
  runner (or a warm one) connected to the scheduler, as for ``submit --cluster tcp://…``; a
  job that a warm runner drives hands its children to that runner.
* the embedded cluster, its runner taking jobs (``keep-alive`` > 0, the default): the
  cluster's scheduler address, and the runner's socket. The child is handed to that very runner,
  which drives it on a thread of its own with the cluster it already holds, and stays up until
  the child ends too (the child's own children go there as well).
* the embedded cluster of a runner that takes no jobs (``keep-alive: 0``): ``local``, an
  embedded cluster of the child's own, since the parent's ends with the parent.
* a ``Client`` of the caller (a notebook): that client's scheduler address.
* Kubernetes: ``kubernetes``, a driver pod and a cluster of the child's own.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from dask_batchapi import config
from dask_batchapi.driver import warm
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.worker.scope import current

logger = logging.getLogger(__name__)


def origin_for(store_url: str, record: JobRecord, client: Any) -> dict:
    """The ``origin`` of a job's context: its store, and the target and runner of children."""
    kind = "object" if record.cluster == "client" else config.cluster_kind(record.cluster)
    runner = warm.bound_socket() if kind in ("local", "address") else None
    if kind in ("address", "kubernetes"):
        cluster = record.cluster
    elif kind == "local" and runner is None:
        cluster = "local"  # the parent's embedded cluster closes with it
    else:  # the embedded cluster of a runner that takes jobs, or the caller's client
        cluster = _scheduler_address(client) or "local"
    if cluster == "local":
        runner = None
    if "://" not in store_url:  # handler code runs in the project folder, not the runner's cwd
        store_url = os.path.abspath(store_url)
    return {"store": store_url, "cluster": cluster, "runner": str(runner) if runner else None}


def _scheduler_address(client: Any) -> str | None:
    try:
        return client.scheduler.address
    except AttributeError:
        return None


def launch_cwd() -> str | None:
    """The working directory of a runner started from handler code: not the project folder
    of the parent on this worker, which goes away with the parent (None: the caller's)."""
    return tempfile.gettempdir() if current() is not None else None


def hand_off_child(store_url: str, record: JobRecord, cluster: str) -> int | None:
    """Inside handler code, give a job bound for the parent's embedded cluster to the runner
    that owns that cluster; its pid, or None (then launch it as any other job)."""
    scope = current()
    if scope is None or not scope.runner or cluster != scope.cluster:
        return None
    pid = warm.hand_off_to(Path(scope.runner), store_url, record.api_name, record.job_id)
    if pid is None:
        logger.warning("the runner of job %s took no job; starting one for %s",
                       scope.job_id, record.job_id)  # fmt: skip
    return pid
