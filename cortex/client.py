"""``cortex.client.Client``: Cortex's client class, here :class:`dask_batchapi.BatchClient`."""

from __future__ import annotations

from typing import Any

__all__ = ["Client"]  # noqa: F822 - provided by __getattr__ (on use)


def __getattr__(name: str) -> Any:
    if name == "Client":  # imported on use: ``import cortex`` must stay cheap
        from dask_batchapi.api.client import BatchClient

        return BatchClient
    raise AttributeError(f"module 'cortex.client' has no attribute {name!r}")
