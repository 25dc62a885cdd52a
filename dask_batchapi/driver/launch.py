"""Starting a job's driver: detached in its own process, handed to a warm runner, on a thread
of the caller (a live ``Client``), or as a Kubernetes Job.

The detached runner (``python -m dask_batchapi.driver.runner``) runs in its own session, so the
job outlives the terminal or kernel that submitted it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from dask_batchapi import config
from dask_batchapi.driver import warm
from dask_batchapi.driver.runner import run_job
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.store import JobStore

logger = logging.getLogger(__name__)


def launch_detached(store: JobStore, record: JobRecord, cluster: str) -> int:
    """Start the job's driver in its own session; returns its pid. The caller may exit.

    On the embedded cluster the machine's local runner takes it
    (:mod:`dask_batchapi.driver.warm`), started first if none runs, under a lock: never a
    second cluster. On a scheduler address a runner kept warm takes it, if one runs."""
    if not warm.serves(cluster):
        return _spawn(store, record, cluster).pid
    compute = store.get_api(record.api_name)["spec"].get("compute")
    key = warm.service_key(cluster, record.workers, compute)
    pid = warm.hand_off(key, store.url, record.api_name, record.job_id)
    if pid is not None or cluster != "local":
        return pid if pid is not None else _spawn(store, record, cluster).pid
    with warm.start_lock(key):
        pid = warm.hand_off(key, store.url, record.api_name, record.job_id)
        if pid is not None:
            return pid
        proc = _spawn(store, record, cluster)
        wait = float(config.get("local.start-timeout"))
        warm.wait_listening(key, lambda: proc.poll() is None, wait)
        return proc.pid


def _spawn(store: JobStore, record: JobRecord, cluster: str) -> subprocess.Popen:
    log_dir = Path(tempfile.gettempdir()) / "dask-batchapi-runners"
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "dask_batchapi.driver.runner",
        "--store",
        store.url,
        "--cluster",
        cluster,
        record.api_name,
        record.job_id,
    ]
    with open(log_dir / f"{record.job_id}.log", "ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own module
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def is_detachable(target: Any) -> bool:
    """Whether a job on ``target`` can be driven by a detached process (not a live object)."""
    return config.cluster_kind(target) != "object"




def launch_in_thread(store: JobStore, api_name: str, job_id: str, cluster: Any) -> threading.Thread:
    thread = threading.Thread(
        target=run_job,
        args=(store, api_name, job_id, cluster),
        name=f"batchapi-driver-{job_id}",
        daemon=True,
    )
    thread.start()
    return thread


def start_job(store: JobStore, record: JobRecord, cluster: Any) -> Any:
    """Start the driver of a job record, detached when the cluster allows it."""
    api_name, job_id = record.api_name, record.job_id
    if not is_detachable(cluster):
        return launch_in_thread(store, api_name, job_id, cluster)
    target = config.cluster_target(cluster)
    if target == "kubernetes":  # the driver runs in a pod: the job outlives this machine
        from dask_batchapi.cluster.kubernetes import launch_driver

        return launch_driver(store.url, api_name, job_id)
    return launch_detached(store, record, target)
