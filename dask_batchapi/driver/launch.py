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

    On the embedded cluster or a scheduler address, a runner kept warm for jobs like this one
    takes it instead (:mod:`dask_batchapi.driver.warm`): no new process, no new cluster."""
    api_name, job_id = record.api_name, record.job_id
    pid = hand_off_child(store.url, record, cluster)  # from handler code: the parent's runner
    if pid is not None:
        return pid
    if warm.serves(cluster):
        compute = store.get_api(api_name)["spec"].get("compute")
        key = warm.service_key(cluster, record.workers, compute)
        pid = warm.hand_off(key, store.url, api_name, job_id)
        if pid is not None:
            return pid
    log_dir = private_runtime_dir("dask-batchapi-runners")
    cmd = [
        sys.executable,
        "-m",
        "dask_batchapi.driver",
        "--store",
        store.url,
        "--cluster",
        cluster,
        api_name,
        job_id,
    ]
    with open_private_log(log_dir / f"{job_id}.log") as out:
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
    return proc.pid


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
