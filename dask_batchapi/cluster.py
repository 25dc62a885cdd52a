"""Where a job runs: thin backends that only differ where they must.

* :class:`LocalBackend` — an embedded ``LocalCluster`` with exactly ``workers`` worker
  processes, one thread each, closed when the job ends.
* :class:`AddressBackend` — an existing scheduler (``tcp://``, ``tls://``), with dask's TLS
  settings (``distributed.comm.tls.*``) when the address is ``tls://``.
* :class:`ClientBackend` — a ``distributed.Client`` (or cluster object) the user already has;
  we never close it.
"""

from __future__ import annotations

import logging
from typing import Any

import dask.config
from distributed import Client, LocalCluster

from . import config
from .errors import ClusterError

logger = logging.getLogger(__name__)


class ClusterBackend:
    """Gives a connected ``Client`` for one job and cleans up after it."""

    description = "cluster"

    def __init__(self, workers: int = 1, compute: dict | None = None):
        self.workers = workers
        self.compute = compute or {}
        self.client: Client | None = None

    def start(self) -> Client:
        try:
            self.client = self._connect()
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot start or reach {self.description}: {exc}") from None
        return self.client

    def _connect(self) -> Client:
        raise NotImplementedError

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> Client:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalBackend(ClusterBackend):
    """An embedded LocalCluster with exactly ``workers`` worker processes."""

    description = "the embedded LocalCluster"

    def _connect(self) -> Client:
        local = {k.replace("-", "_"): v for k, v in (config.get("local") or {}).items()}
        if self.compute.get("mem"):
            local.setdefault("memory_limit", int(self.compute["mem"]))
        # The driver counts lost workers per batch itself: let every loss reach it at once. No
        # root-task queuing: the driver's own window keeps `prefetch` chunks per worker.
        settings = {
            "distributed.scheduler.allowed-failures": 0,
            "distributed.scheduler.worker-saturation": float("inf"),
        }
        with dask.config.set(settings):
            self.cluster = LocalCluster(n_workers=self.workers, processes=True, **local)
        return Client(self.cluster, set_as_default=False)

    def close(self) -> None:
        super().close()
        if getattr(self, "cluster", None) is not None:
            self.cluster.close()
            self.cluster = None


class AddressBackend(ClusterBackend):
    """An existing Dask scheduler, by address."""

    def __init__(self, address: str, workers: int = 1, compute: dict | None = None):
        super().__init__(workers, compute)
        self.address = address
        self.description = f"the scheduler at {address}"

    def _connect(self) -> Client:
        return Client(self.address, timeout="10s", set_as_default=False)


class ClientBackend(ClusterBackend):
    """A Client (or cluster object) owned by the caller: used as is, never closed."""

    description = "the given client"

    def __init__(self, target: Any, workers: int = 1, compute: dict | None = None):
        super().__init__(workers, compute)
        self.target = target

    def _connect(self) -> Client:
        if isinstance(self.target, Client):
            return self.target
        return Client(self.target, set_as_default=False)

    def close(self) -> None:
        if self.client is not None and self.client is not self.target:
            self.client.close()
        self.client = None


def backend_for(target: Any, workers: int = 1, compute: dict | None = None) -> ClusterBackend:
    """The backend for ``target``: "local", an address, a Client, or a cluster object."""
    if target is None or target == "local":
        return LocalBackend(workers, compute)
    if isinstance(target, str):
        if target == "kubernetes":
            raise ClusterError("--cluster kubernetes is not supported by this version yet")
        if "://" in target or ":" in target:
            return AddressBackend(target, workers, compute)
        raise ClusterError(
            f"unknown cluster {target!r}: use local, a scheduler address (tcp://host:8786) "
            "or kubernetes"
        )
    return ClientBackend(target, workers, compute)
