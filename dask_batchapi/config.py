"""Settings: dask.config ``batchapi.*`` with our defaults, plus the contract's env variables.

The defaults live in ``batchapi.yaml`` next to this file (one comment per key). Any key can be
set the dask way (``~/.config/dask/*.yaml``, ``DASK_BATCHAPI__PREFETCH=4``). The store and the
cluster additionally honour ``DASK_BATCHAPI_STORE`` / ``DASK_BATCHAPI_CLUSTER``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.config
import yaml

_DEFAULTS_FILE = Path(__file__).with_name("batchapi.yaml")
with _DEFAULTS_FILE.open() as _f:
    _DEFAULTS = yaml.safe_load(_f)
dask.config.update_defaults(_DEFAULTS)

DEFAULT_STORE = "~/.dask-batchapi/store"


def get(key: str, default: Any = None) -> Any:
    """A ``batchapi.<key>`` setting from dask config."""
    return dask.config.get(f"batchapi.{key}", default=default)


def store_url(explicit: str | None = None) -> str:
    """The store URL: argument, then ``DASK_BATCHAPI_STORE``, then dask config, then the default."""
    url = explicit or os.environ.get("DASK_BATCHAPI_STORE") or get("store") or DEFAULT_STORE
    return os.path.expanduser(url) if "://" not in url else url


def cluster_target(explicit: Any = None) -> Any:
    """The cluster: argument, then ``DASK_BATCHAPI_CLUSTER``, then dask config (default local)."""
    return explicit or os.environ.get("DASK_BATCHAPI_CLUSTER") or get("cluster") or "local"


def cluster_kind(target: Any) -> str:
    """What a cluster target is: "local", "kubernetes", "address" or "object" (a live Client
    or cluster). ClusterError for a string that is none of them."""
    if target is None or target == "local":
        return "local"
    if not isinstance(target, str):
        return "object"
    if target == "kubernetes":
        return "kubernetes"
    if "://" in target or ":" in target:
        return "address"
    from dask_batchapi.errors import ClusterError

    raise ClusterError(
        f"unknown cluster {target!r}: use local, a scheduler address (tcp://host:8786) "
        "or kubernetes"
    )


def storage_options() -> dict:
    """fsspec storage options for every URL the framework opens."""
    return dict(get("storage-options") or {})
