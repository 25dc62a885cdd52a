"""Where a client points: named environments, the job's own inside handler code, the defaults.

Cortex scripts name an environment: ``cortex.client("aws")``. Here an environment is a store and
a cluster, set in dask config::

    # ~/.config/dask/batchapi.yaml
    batchapi:
      environments:
        aws: {store: s3://my-bucket/batchapi, cluster: tcp://scheduler.internal:8786}
        laptop: {store: ~/batchapi-store}          # cluster: the default (local)

An unknown name is an error (:class:`~dask_batchapi.errors.EnvironmentNotFound`), never a new
store directory named after it. Without a name, handler code gets its job's own store and
cluster (:mod:`dask_batchapi.worker.scope`); anywhere else, the defaults (``batchapi.store``,
``batchapi.cluster``).

>>> import dask
>>> with dask.config.set({"batchapi.environments": {"aws": {"store": "s3://b/p"}}}):
...     resolve("aws")
('s3://b/p', None)
"""

from __future__ import annotations

import logging
from typing import Any

from dask_batchapi import config
from dask_batchapi.errors import ConfigError, EnvironmentNotFound
from dask_batchapi.worker.scope import current

logger = logging.getLogger(__name__)

_KEYS = ("store", "cluster")


def resolve(env: str | None, store: str | None = None, cluster: Any = None) -> tuple[Any, Any]:
    """The ``(store, cluster)`` a client of ``env`` uses; explicit arguments win."""
    if env is None:
        scope = current()
        if scope is not None and store is None and cluster is None:
            return scope.store, scope.cluster
        return store, cluster
    settings = environment(env)
    return (
        store if store is not None else settings.get("store"),
        cluster if cluster is not None else settings.get("cluster"),
    )


def environment(name: str) -> dict:
    """The ``batchapi.environments.<name>`` mapping, checked."""
    environments = config.get("environments") or {}
    if not isinstance(environments, dict):
        raise ConfigError(
            "dask config batchapi.environments must be a mapping of names to "
            f"{{store, cluster}}, got {type(environments).__name__}"
        )
    if not isinstance(name, str) or name not in environments:
        known = ", ".join(sorted(map(str, environments))) or "none are configured"
        raise EnvironmentNotFound(
            f"no environment named {name!r} (known: {known}); add it to dask config as "
            f"batchapi.environments.{name}: {{store: URL, cluster: local|tcp://HOST:PORT}}"
        )
    settings = environments[name] or {}
    where = f"dask config batchapi.environments.{name}"
    if not isinstance(settings, dict):
        raise ConfigError(f"{where} must be a mapping {{store, cluster}}, got {settings!r}")
    unknown = sorted(set(map(str, settings)) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown key {unknown[0]!r}; only store and cluster")
    return {k: settings[k] for k in _KEYS if settings.get(k) is not None}


def names() -> list[str]:
    """The configured environment names, sorted."""
    return sorted(map(str, config.get("environments") or {}))
