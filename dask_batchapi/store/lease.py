"""Driving a job is an exclusive, numbered lease in the store: never two drivers.

Whoever starts a driver (``submit``, ``resume``, ``retry``) first *acquires* the next lease,
``lease/<n>`` with ``n`` one above the latest, by an atomic create-if-absent (``O_EXCL``
locally, a conditional PUT ``If-None-Match: *`` on S3): of two concurrent resumes exactly one
gets it. The driver that then runs the job *adopts* that lease, again create-if-absent
(``lease/<n>.driver``): a second process started for the same lease (a warm runner took the job
although its answer was lost) cannot adopt it and leaves. The number ``n`` is the driver's
fencing token: every write of a :class:`FencedStore` below the job first checks that no newer
lease exists, so a stale driver (one that lost its heartbeat and was resumed) cannot write a
state, a ledger, dead-letter or log segment once it has been replaced. A driver *releases*
its lease when it ends (``lease/<n>.released``, a tiny file, written even on a full store).

::

    jobs/<api>/<job_id>/lease/00000002             acquired by resume (who, when)
    jobs/<api>/<job_id>/lease/00000002.driver      adopted by the driver (host, pid)
    jobs/<api>/<job_id>/lease/00000002.released    its driver ended

The check-then-write of a fenced write is two requests, not one: a driver replaced between
them writes that one object; every later write is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass

from dask_batchapi.errors import JobStateError, LeaseLost, StoreError
from dask_batchapi.fsutil import create_exclusive
from dask_batchapi.store.jobstore import JobStore

logger = logging.getLogger(__name__)

_LEASE = re.compile(r"\d{8}")


def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "time": time.time(),
    }


def _lease_path(store: JobStore, api: str, job_id: str, name: str = "") -> str:
    return store._job(api, job_id, "lease", name) if name else store._job(api, job_id, "lease")


def latest(store: JobStore, api: str, job_id: str) -> int:
    """The number of the job's latest lease (0: none yet)."""
    names = store._names(_lease_path(store, api, job_id))
    numbers = [int(n) for n in names if _LEASE.fullmatch(n)]
    return max(numbers, default=0)


def _create(store: JobStore, path: str, info: dict) -> bool:
    try:
        return create_exclusive(store.fs, path, json.dumps(info).encode())
    except OSError as exc:
        raise StoreError(f"cannot write {path} in store {store.url}: {exc}") from None


def acquire(store: JobStore, api: str, job_id: str, after: int, by: str) -> int:
    """Take lease ``after + 1`` for a driver about to start; JobStateError if someone else
    took it first (a concurrent ``resume``)."""
    token = after + 1
    path = _lease_path(store, api, job_id, f"{token:08d}")
    if not _create(store, path, {**_holder(), "by": by}):
        raise JobStateError(f"job {job_id} is being started by another caller right now")
    return token


@dataclass(frozen=True)
class LeaseInfo:
    """What the store says of a lease: when it was taken, by which driver, whether it ended."""

    token: int
    acquired: dict | None
    driver: dict | None
    released: bool


def read(store: JobStore, api: str, job_id: str, token: int) -> LeaseInfo:
    def get(suffix: str) -> dict | None:
        try:
            data = store.read_json(_lease_path(store, api, job_id, f"{token:08d}{suffix}"))
        except (FileNotFoundError, StoreError):
            return None
        return data if isinstance(data, dict) else {}

    released = store.exists(_lease_path(store, api, job_id, f"{token:08d}.released"))
    return LeaseInfo(token, get(""), get(".driver"), released)


def adopt(store: JobStore, api: str, job_id: str) -> FencedStore:
    """Become the driver of the job's latest lease (a job from before leases gets its first);
    LeaseLost if another driver holds it or it has ended. Returns the fenced store to write
    with."""
    token = latest(store, api, job_id)
    if token == 0:  # a job from before leases
        try:
            token = acquire(store, api, job_id, 0, by="driver")
        except JobStateError:
            raise LeaseLost(
                f"job {job_id} is already driven (lease 1); this driver leaves"
            ) from None
    path = _lease_path(store, api, job_id, f"{token:08d}.driver")
    info = read(store, api, job_id, token)
    if info.released or not _create(store, path, _holder()):
        raise LeaseLost(f"job {job_id} is already driven (lease {token}); this driver leaves")
    return FencedStore(store, api, job_id, token)


class FencedStore(JobStore):
    """The store as one driver sees it: writes below its job need its lease to be the latest."""

    def __init__(self, store: JobStore, api: str, job_id: str, token: int):  # noqa: D107
        self.__dict__.update(store.__dict__)
        self.api, self.job_id, self.token = api, job_id, token
        self._prefix = store._job(api, job_id) + "/"
        self._lease_prefix = _lease_path(store, api, job_id) + "/"

    def check(self) -> None:
        """LeaseLost unless this driver's lease is still the job's latest."""
        newest = latest(self, self.api, self.job_id)
        if newest != self.token:
            raise LeaseLost(
                f"job {self.job_id} is now driven under lease {newest}; the driver of lease"
                f" {self.token} must not write to it"
            )

    def write_bytes(self, path: str, data: bytes) -> None:
        if path.startswith(self._prefix) and not path.startswith(self._lease_prefix):
            self.check()
        super().write_bytes(path, data)

    def release(self) -> None:
        """Mark the lease ended, so that nobody waits for this driver (best effort)."""
        path = _lease_path(self, self.api, self.job_id, f"{self.token:08d}.released")
        try:
            if not self.job_exists(self.api, self.job_id):
                return  # deleted: writing would bring a piece of it back
            _create(self, path, _holder())
        except StoreError as exc:
            logger.error("job %s: lease %s not released: %s", self.job_id, self.token, exc)
