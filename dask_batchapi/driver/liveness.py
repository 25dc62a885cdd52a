"""Whether a job's driver is alive: its pid on this host, else its heartbeat in the store."""

from __future__ import annotations

import socket
import time

import psutil

from dask_batchapi.status import JobState
from dask_batchapi.store import JobStore, lease


def driver_alive(state: JobState) -> bool | None:
    """True/False when the driver ran on this host (its pid tells); None when it ran elsewhere."""
    driver = state.driver or {}
    if driver.get("host") != socket.gethostname() or not driver.get("pid"):
        return None
    try:
        proc = psutil.Process(driver["pid"])
        return proc.status() != psutil.STATUS_ZOMBIE and _is_our_driver(proc)
    except psutil.NoSuchProcess:
        return False


def _is_our_driver(proc: psutil.Process) -> bool:
    """The pid may have been reused by an unrelated process since the driver died."""
    try:
        cmdline = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - no permission: assume it is
        return True
    return "dask_batchapi" in cmdline or "python" in cmdline or "ipykernel" in cmdline


def read_state(store: JobStore, api_name: str, job_id: str) -> JobState:
    """The job's state, its heartbeat the latest of the driver loop's and the process's."""
    state = JobState.from_dict(store.read_state(api_name, job_id))
    pulse = store.read_pulse(api_name, job_id)
    if pulse is not None and (state.heartbeat is None or pulse > state.heartbeat):
        state.heartbeat = pulse
    return state


def lease_busy(
    store: JobStore, api_name: str, job_id: str, token: int, grace: float
) -> bool | None:
    """Whether lease ``token`` of the job still has, or is about to have, a driver.

    False: none (no lease, or its driver released it, or nobody adopted it within ``grace``
    seconds: its driver never started). True: taken less than ``grace`` seconds ago, its driver
    not up yet. None: a driver adopted it and did not release it; its pid or heartbeat tell.
    """
    if token == 0:
        return False
    info = lease.read(store, api_name, job_id, token)
    if info.released:
        return False
    if info.driver is None:
        taken = float((info.acquired or {}).get("time") or 0)
        return time.time() - taken < grace
    return None
