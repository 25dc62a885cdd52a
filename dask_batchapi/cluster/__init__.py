"""Where jobs run: local / address / client / Kubernetes backends and worker resources.

Each backend is a thin :class:`~dask_batchapi.cluster.backends.ClusterBackend` subclass that
differs only where it must; :func:`backend_for` picks one for a target.
"""

from __future__ import annotations

from typing import Any

from dask_batchapi import config
from dask_batchapi.cluster.backends import (
    AddressBackend,
    ClientBackend,
    ClusterBackend,
    LocalBackend,
)
from dask_batchapi.cluster.kubernetes import KubernetesBackend

__all__ = ["AddressBackend", "ClientBackend", "ClusterBackend", "KubernetesBackend",
           "LocalBackend", "backend_for"]


def backend_for(
    target: Any, workers: int = 1, compute: dict | None = None, job: dict | None = None
) -> ClusterBackend:
    """The backend for ``target``: "local", "kubernetes", an address, a Client or a cluster.

    ``job`` (the job's fields) names and labels what a backend creates for the job.
    """
    kind = config.cluster_kind(target)
    if kind == "local":
        return LocalBackend(workers, compute, job)
    if kind == "kubernetes":
        return KubernetesBackend(workers, compute, job)
    if kind == "address":
        return AddressBackend(target, workers, compute, job=job)
    return ClientBackend(target, workers, compute, job=job)
