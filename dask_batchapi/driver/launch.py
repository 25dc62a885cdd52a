"""Starting a job's driver: detached in its own process, handed to a warm runner, on a thread
of the caller (a live ``Client``), or as a Kubernetes Job.

The detached runner (``python -m dask_batchapi.driver``) runs in its own session, so the
job outlives the terminal or kernel that submitted it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from typing import Any

from dask_batchapi import config
from dask_batchapi.driver import warm
from dask_batchapi.driver.children import hand_off_child, launch_cwd
from dask_batchapi.driver.runner import run_job
from dask_batchapi.fsutil import open_private_log, private_runtime_dir
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.store import JobStore
from dask_batchapi.worker import processes

logger = logging.getLogger(__name__)


def launch_detached(store: JobStore, record: JobRecord, cluster: str) -> int:
    """Start the job's driver in its own session; returns its pid. The caller may exit.

    On the embedded cluster the machine's local runner takes it
    (:mod:`dask_batchapi.driver.warm`), started first if none runs, under a lock: never a
    second cluster. On a scheduler address a runner kept warm takes it, if one runs. A job
    submitted from handler code goes to the runner of its parent's cluster first."""
    pid = hand_off_child(store.url, record, cluster)
    if pid is not None:
        return pid
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
    log_dir = private_runtime_dir("dask-batchapi-runners")
    cmd = [
        sys.executable,
        "-m",
        "dask_batchapi.driver",
        "--store",
        store.url,
        "--cluster",
        cluster,
        record.api_name,
        record.job_id,
    ]
    with open_private_log(log_dir / f"{record.job_id}.log") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own module
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=launch_cwd(),
        )
    processes.detached(proc.pid)  # started from handler code, it outlives the parent job
    return proc


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
