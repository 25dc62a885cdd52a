"""The local runner: one long-lived process that hosts the machine's embedded cluster.

``cluster: local`` means one shared ``LocalCluster`` per user (and interpreter and
environment), of ``batchapi.local.max-workers`` worker processes (default: the CPU count), one
thread each, hosted by one runner. ``submit``/``resume`` hand it their job over a Unix socket;
it drives each job on a thread of its own, and the cluster's worker leases
(:mod:`dask_batchapi.cluster.leases`) give each job its own workers and queue the rest. Only
when no runner answers does a submit start one, under a file lock, and waits until it listens:
concurrent cold submits never start a second cluster. The runner stays up
``batchapi.keep-alive`` seconds after its last job (0: it exits when idle).

A scheduler address gets a warm runner too (with ``keep-alive`` > 0): it keeps its connection
open for the next jobs on that scheduler. A runner only takes jobs of its own shape: the
socket's name is a hash of the Python executable, the environment and the target (for
``local``, the ``batchapi.local`` settings). A job from an environment that differs (another
``DASK_BATCHAPI__*`` setting, say) needs a driver with those settings, so it gets its own
runner, and, on ``local``, its own cluster.

Protocol: the client connects, sends one JSON line ``{"store", "api", "job"}``; the service
answers one JSON line ``{"pid"}`` once the job's driver thread has started, or ``{"error"}``.
``{"query": "address"}`` asks for the scheduler address of its cluster (``cluster_status``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dask_batchapi import config
from dask_batchapi.fsutil import peer_uid, private_runtime_dir

logger = logging.getLogger(__name__)

# variables that differ between two shells of one user without changing what a job sees
_VOLATILE_ENV = {"PWD", "OLDPWD", "SHLVL", "_", "COLUMNS", "LINES", "TERM", "WINDOWID"}
# ... and the store's: a request names its store (a warm runner serves any store)
_VOLATILE_ENV |= {"DASK_BATCHAPI_STORE", "DASK_BATCHAPI_CLUSTER"}
_HANDOFF_TIMEOUT = 5.0  # seconds a client waits for a service to answer
_BOUND: list[Path] = []  # the socket a service of this process listens on (at most one)


def keep_alive() -> float:
    """Seconds a runner's cluster stays warm after its last job (0: exit at once)."""
    return max(0.0, float(config.get("keep-alive") or 0))


def serves(target: Any) -> bool:
    """Whether jobs on ``target`` go to a runner service: always on the embedded cluster (one
    per machine), and on scheduler addresses when ``keep-alive`` is on."""
    kind = config.cluster_kind(target)
    return kind == "local" or (kind == "address" and keep_alive() > 0)


def local_size() -> int:
    """Worker processes of the embedded cluster: ``batchapi.local.max-workers`` or the CPUs."""
    return int(config.get("local.max-workers") or os.cpu_count() or 1)


def service_key(target: str, workers: int = 1, compute: dict | None = None) -> str:
    """Which runner a job needs, as a short hash (the service's socket name): the same
    interpreter and environment, and the same scheduler address, or for the embedded cluster
    the same ``batchapi.local`` settings (``workers`` and ``compute`` no longer matter: the
    cluster is shared, sized by ``max-workers``)."""
    env = {k: v for k, v in os.environ.items() if k not in _VOLATILE_ENV}
    shape = [sys.executable, sorted(env.items()), target]
    if target == "local":
        shape += [config.get("local")]
    return hashlib.sha256(json.dumps(shape, default=str).encode()).hexdigest()[:20]


@contextlib.contextmanager
def start_lock(key: str) -> Iterator[None]:
    """Held while a submit looks for the runner of ``key`` and, if none, starts one."""
    path = socket_path(key).with_suffix(".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def wait_listening(key: str, alive: Any, timeout: float) -> bool:
    """Wait until the runner of ``key`` listens; False if ``alive()`` turns false or time runs
    out first (the runner then reports the job's failure itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if answers(key):
            return True
        time.sleep(0.05)
    return False


def answers(key: str) -> bool:
    """Whether a warm runner listens for ``key`` right now."""
    return _answers(socket_path(key))


def bound_socket() -> Path | None:
    """The socket of the service this process runs, while it takes jobs (else None)."""
    return _BOUND[0] if _BOUND else None


def socket_path(key: str) -> Path:
    """The key's socket, in this user's private directory (refused if someone squats it)."""
    return private_runtime_dir("dask-batchapi") / f"{key}.sock"


def hand_off(key: str, store_url: str, api_name: str, job_id: str) -> int | None:
    """Give a job to the warm service for ``key``; its pid, or None when there is none (or
    it did not take the job: then nothing of the job was started)."""
    return hand_off_to(socket_path(key), store_url, api_name, job_id)


def hand_off_to(path: Path, store_url: str, api_name: str, job_id: str) -> int | None:
    """Give a job to the service listening at ``path`` (see :func:`hand_off`)."""
    answer = _ask(path, {"store": store_url, "api": api_name, "job": job_id})
    pid = answer.get("pid")
    return int(pid) if pid else None


def scheduler_address(key: str) -> str | None:
    """The scheduler address of the runner of ``key`` (its cluster), None if none runs."""
    answer = _ask(socket_path(key), {"query": "address"})
    return answer.get("address")


def _ask(path: Path, request: dict) -> dict:
    """One request to the runner listening at ``path``, if it is this user's (SO_PEERCRED)."""
    if not path.exists():
        return {}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_HANDOFF_TIMEOUT)
            sock.connect(str(path))
            if not _ours(sock):
                return {}
            sock.sendall(json.dumps(request).encode() + b"\n")
            return json.loads(_read_line(sock) or b"{}")
    except (OSError, ValueError) as exc:
        logger.debug("no warm service at %s: %s", path, exc)
        return {}


def _ours(sock: socket.socket) -> bool:
    """Whether the listener is a process of this user (SO_PEERCRED): a job goes to no one else."""
    uid = peer_uid(sock)
    if uid != os.getuid():
        logger.warning("warm runner socket answered by uid %s, not ours: not used", uid)
        return False
    return True


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        part = sock.recv(4096)
        if not part:
            break
        data += part
    return data


class Service:
    """The listening side, in a runner: takes jobs while its cluster is healthy and it has
    been idle less than ``keep_alive`` seconds."""

    def __init__(self, key: str, min_workers: int, start_job: Any, client: Any):
        self.key, self.min_workers = key, min_workers
        self.start_job = start_job  # (store_url, api, job_id) -> threading.Thread
        self.client = client
        self.path = socket_path(key)
        self.listener: socket.socket | None = None

    def bind(self) -> bool:
        """Listen on the key's socket; False when a live service already does."""
        if _answers(self.path):
            return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a service that died without cleaning up
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
        except OSError:  # another runner bound it first
            listener.close()
            return False
        listener.listen(16)
        listener.settimeout(0.2)
        self.listener = listener
        _BOUND[:] = [self.path]
        return True

    def serve(self, threads: list[threading.Thread], keep_alive: float) -> None:
        """Take jobs until idle for ``keep_alive`` seconds (no job thread alive)."""
        idle_since = time.monotonic()
        while self.listener is not None:
            threads[:] = [t for t in threads if t.is_alive()]  # ended jobs are not kept
            if threads:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= keep_alive:
                break
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                thread = self._take(conn)
            if thread is not None:
                threads.append(thread)
        self.close()

    def _take(self, conn: socket.socket) -> threading.Thread | None:
        conn.settimeout(_HANDOFF_TIMEOUT)
        try:
            line = _read_line(conn)
            if not line:
                return None  # a liveness probe (another runner's bind)
            request = json.loads(line)
            if request.get("query") == "address":
                address = self.client.scheduler.address
                conn.sendall(json.dumps({"address": address}).encode() + b"\n")
                return None
            if not self._healthy():
                conn.sendall(b'{"error": "cluster unhealthy"}\n')
                self.close()  # new jobs go to a new runner from now on
                return None
            thread = self.start_job(request["store"], request["api"], request["job"])
            conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
            return thread
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("bad hand-off request: %s", exc)
            return None

    def _healthy(self) -> bool:
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except Exception:  # noqa: BLE001 - the cluster is gone
            return False
        return len(info.get("workers", {})) >= self.min_workers

    def close(self) -> None:
        if self.listener is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # first: a client from now on starts a new runner
        if self.path in _BOUND:
            _BOUND.remove(self.path)
        self.listener.close()
        self.listener = None


def _answers(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(path))
        return True
    except OSError:
        return False
