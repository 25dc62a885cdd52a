"""Where a job runs: thin backends that only differ where they must.

* :class:`LocalBackend` — an embedded ``LocalCluster`` with ``workers`` worker processes (or
  adaptive from ``batchapi.local.min-workers`` up to them), one thread each (``batchapi.local.*``); the local runner hosts one, shared by
  every job of the machine (:mod:`dask_batchapi.driver.warm`), and closes it when it exits.
* :class:`AddressBackend` — an existing scheduler (``tcp://``, ``tls://``), with dask's TLS
  settings (``distributed.comm.tls.*``) when the address is ``tls://``.
* :class:`ClientBackend` — a ``distributed.Client`` (or cluster object) the user already has;
  we never close it.
* :class:`~dask_batchapi.kubernetes.KubernetesBackend` — a ``KubeCluster`` of the
  dask-kubernetes operator (``batchapi.kubernetes.*``), in its own module.

Compute resources: ``compute.gpu`` becomes the Dask resource ``GPU`` on every batch task
(:func:`task_resources`), so GPU batches run only on workers started with
``--resources GPU=n``; :func:`missing_resources` says, in one line, when no worker has them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

import dask.config
from distributed import Client, LocalCluster
from distributed.security import Security

from dask_batchapi import config
from dask_batchapi.errors import ClusterError

logger = logging.getLogger(__name__)

_DRIVER_LOG_LENGTH = 16  # messages a driver's client keeps for debugging
GPU = "GPU"  # the resource name Dask's docs use: `dask worker --resources "GPU=2"`

_TLS_HINT = (
    "set dask's TLS settings: distributed.comm.tls.ca-file, distributed.comm.tls.client.cert "
    "and distributed.comm.tls.client.key (env DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT, DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY)"
)


class ClusterBackend:
    """Gives a connected ``Client`` for one job and cleans up after it."""

    description = "cluster"

    def __init__(self, workers: int = 1, compute: dict | None = None, job: dict | None = None):
        self.workers = workers
        self.compute = compute or {}
        self.job = job or {}
        self.client: Client | None = None

    def start(self) -> Client:
        try:
            self.client = self._connect()
        except (OSError, TimeoutError, ValueError) as exc:
            self.close()
            raise ClusterError(
                f"cannot start or reach {self.description}: {error_line(exc)}"
            ) from None
        return self.client

    def _connect(self) -> Client:
        raise NotImplementedError

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> Client:
        # idempotent: `backend.start()` then `with backend:` (the runner beats meanwhile)
        return self.client if self.client is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalBackend(ClusterBackend):
    """An embedded LocalCluster of ``workers`` worker processes, one thread each.

    ``local`` (the ``batchapi.local`` settings: host, memory limit, resources, min-workers...)
    and ``worker_profile`` are arguments whose defaults come from dask config, as in
    dask-jobqueue: ``LocalBackend(2, local={"memory-limit": "1GiB"})``.
    """

    description = "the embedded LocalCluster"
    cluster: LocalCluster | None = None

    def __init__(
        self,
        workers: int = 1,
        compute: dict | None = None,
        job: dict | None = None,
        *,
        local: dict | None = None,
        worker_profile: bool | None = None,
    ):
        super().__init__(workers, compute, job)
        self.local = dict(config.get("local") or {}) if local is None else dict(local)
        if worker_profile is None:
            worker_profile = bool(config.get("worker-profile"))
        self.worker_profile = worker_profile

    def _connect(self) -> Client:
        own = ("max-workers", "min-workers", "start-timeout")  # ours, not LocalCluster's
        passed = {k: v for k, v in self.local.items() if k.replace("_", "-") not in own}
        local = {k.replace("-", "_"): v for k, v in passed.items()}
        local["resources"] = parse_resources(local.get("resources"), "batchapi.local.resources")
        if not local["resources"]:
            del local["resources"]
        local["host"] = local.get("host") or "127.0.0.1"  # loopback unless opened explicitly
        if self.compute.get("mem"):  # the API's own need wins over a config-wide default
            local["memory_limit"] = int(self.compute["mem"])
        # The driver counts lost workers per batch itself: let every loss reach it at once. No
        # root-task queuing: the driver's own window keeps `prefetch` chunks per worker.
        settings = {
            "distributed.scheduler.allowed-failures": 0,
            "distributed.scheduler.worker-saturation": float("inf"),
            # the scheduler in this process keeps its last N messages to each worker (chunks'
            # items included) and its last N events per topic (the driver reads the memory and
            # batch-timeout events): a short memory
            "distributed.admin.low-level-log-length": 64,
            # the statistical profiler samples every task thread each 10 ms: ~4 % of a 2-core
            # machine's CPU taken from the handlers (benchmarks/FINDINGS.md)
            "distributed.worker.profile.enabled": self.worker_profile,
        }
        with dask.config.set(settings):  # the client's own message log included
            minimum = self.local.get("min-workers", self.local.get("min_workers"))
            adaptive = minimum is not None and int(minimum) < self.workers
            start = int(minimum) if adaptive else self.workers
            self.cluster = LocalCluster(n_workers=start, processes=True, **local)
            if adaptive:  # scaled by the queue's leases (dask_batchapi.cluster.leases)
                self.cluster.adapt(minimum=start, maximum=self.workers)
            return Client(self.cluster, set_as_default=False)

    def close(self) -> None:
        super().close()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


class AddressBackend(ClusterBackend):
    """An existing Dask scheduler, by address (``tls://`` with dask's TLS settings)."""

    def __init__(self, address: str, workers: int = 1, compute: dict | None = None, **kw: Any):
        super().__init__(workers, compute, **kw)
        self.address = address
        self.description = f"the scheduler at {address}"

    def _connect(self) -> Client:
        security = client_security(self.address)
        return driver_client(self.address, security=security)


class ClientBackend(ClusterBackend):
    """A Client (or cluster object) owned by the caller: used as is, never closed."""

    description = "the given client"

    def __init__(self, target: Any, workers: int = 1, compute: dict | None = None, **kw: Any):
        super().__init__(workers, compute, **kw)
        self.target = target

    def _connect(self) -> Client:
        if isinstance(self.target, Client):
            # the driver's own connection to the caller's scheduler, with a short message log
            return driver_client(self.target.scheduler.address, security=self.target.security)
        return driver_client(self.target)

    def close(self) -> None:
        if self.client is not None and self.client is not self.target:
            self.client.close()
        self.client = None


def driver_client(target: Any, **kwargs: Any) -> Client:
    """A Client for a job's driver. distributed's clients keep their last
    ``low-level-log-length`` (1000) messages to the scheduler for debugging, and every chunk
    a driver submits is one: a short log keeps the driver's memory O(window) at any job size."""
    with dask.config.set({"distributed.admin.low-level-log-length": _DRIVER_LOG_LENGTH}):
        return Client(target, timeout="10s", set_as_default=False, **kwargs)


# -- existing clusters: security and a submit-time check ----------------------------------------
def client_security(address: str) -> Security | None:
    """dask's client ``Security`` for ``address``, from ``distributed.comm.tls.*``.

    None when ``distributed.client.security-loader`` is set: ``Client`` then calls it itself.
    A ``tls://`` address without a client certificate is a :class:`ClusterError` naming the
    settings to set (distributed itself would fail with a TypeError about ``ssl_context``).
    """
    if dask.config.get("distributed.client.security-loader", None):
        return None
    security = Security()
    if (
        address.startswith("tls://")
        and security.get_connection_args("client")["ssl_context"] is None
    ):
        raise ClusterError(
            f"{address} is a TLS scheduler and no client certificate is set: {_TLS_HINT}"
        )
    return security


def check_address(address: str, timeout: float = 5.0) -> None:
    """Open one Dask comm to the scheduler (TLS handshake included), then close it.

    Meant for submit: a typo, a stopped scheduler or missing/wrong certificates fail there, in
    one line, before anything is written — not later in the detached driver.
    """
    security = client_security(address)
    if security is None:  # a security loader: only distributed's Client knows how to call it
        return

    async def probe() -> None:
        from distributed.comm import connect

        comm = await connect(address, timeout=timeout, **security.get_connection_args("client"))
        await comm.close()

    # a thread of its own: the caller may be a notebook whose event loop is running
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, probe()).result()
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(
                f"cannot reach the scheduler at {address}: {error_line(exc)}"
            ) from None


# -- compute resources --------------------------------------------------------------------------
def task_resources(compute: dict | None) -> dict | None:
    """The Dask resources every batch task of an API needs: ``{"GPU": gpu}`` when gpu > 0.

    ``compute.cpu`` is deliberately not a task resource: Dask resources are labels that the
    cluster's operator declares (``--resources``), and almost no cluster declares a CPU one,
    so every job would wait for workers that never come. A worker runs one handler call at a
    time anyway (one thread), so a batch has its worker's CPUs; ``cpu`` sizes the worker
    instead (Kubernetes: the pod's CPU request). ``compute.mem`` likewise sizes the worker
    (embedded cluster: ``memory_limit``; Kubernetes: the pod's memory request and limit).
    """
    gpu = int((compute or {}).get("gpu") or 0)
    return {GPU: gpu} if gpu > 0 else None


def parse_resources(value: Any, where: str = "resources") -> dict[str, float]:
    """``"GPU=1 MEM=10e9"``, ``"GPU=1,MEM=10e9"`` or a mapping -> ``{"GPU": 1, "MEM": 1e10}``.

    The string form is ``dask worker --resources``' own.
    """
    if value in (None, "", {}):
        return {}
    try:
        if isinstance(value, str):
            pairs = (item.split("=", 1) for item in value.replace(",", " ").split())
            value = {name.strip(): amount for name, amount in pairs}
        if not isinstance(value, dict):
            raise ValueError
        parsed = {str(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise ClusterError(
            f"{where} must look like 'GPU=1 MEM=10e9' or {{GPU: 1}}, got {value!r}"
        ) from None
    if any(not k or v < 0 for k, v in parsed.items()):
        raise ClusterError(f"{where} must name resources with amounts >= 0, got {value!r}")
    return {k: int(v) if v.is_integer() else v for k, v in parsed.items()}


def eligible_workers(workers: dict, resources: dict | None) -> list[str]:
    """Addresses of the workers (``scheduler_info()["workers"]``) that have ``resources``."""
    return sorted(
        address
        for address, info in workers.items()
        if all((info.get("resources") or {}).get(k, 0) >= v for k, v in (resources or {}).items())
    )


def missing_resources(client: Client, resources: dict | None) -> str | None:
    """One line saying that no worker of the cluster has ``resources``; None if one has.

    None as well while the cluster has no worker at all (an adaptive cluster scaling up from
    zero): the job then waits for workers, as any Dask computation does.
    """
    if not resources:
        return None
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if not workers or eligible_workers(workers, resources):
        return None
    wanted = format_resources(resources)
    declared = sorted(
        {format_resources(w["resources"]) for w in workers.values() if w.get("resources")}
    )
    return (
        f"no worker of the cluster has the resources {wanted} that the API's compute asks for "
        f"(its {len(workers)} worker(s) declare {'; '.join(declared) or 'no resources'}); "
        f'start workers with `dask worker --resources "{wanted}"` '
        "(the embedded cluster: batchapi.local.resources)"
    )


def format_resources(resources: dict) -> str:
    """``{"GPU": 1}`` -> ``"GPU=1"``, the form ``--resources`` takes."""
    return " ".join(f"{k}={v:g}" for k, v in sorted(resources.items()))


def error_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
