"""A driver's settings: keyword arguments whose defaults come from dask config ``batchapi.*``.

As in dask-jobqueue, every setting can be passed explicitly (tests and embedding code do) and
falls back to the config otherwise (``~/.config/dask/*.yaml``, ``DASK_BATCHAPI__PREFETCH=4``).

>>> DriverSettings.resolve(prefetch=4).prefetch
4
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from dask_batchapi import config


@dataclass(frozen=True)
class DriverSettings:
    """How one :class:`~dask_batchapi.driver.driver.JobDriver` paces and judges a job."""

    prefetch: int  # chunks in flight per worker
    chunk_target_seconds: float  # how long one coalesced chunk should take
    max_chunk_batches: int  # most batches in one chunk
    max_chunk_items: int  # most item_list items in one chunk (they travel in the chunk)
    checkpoint_interval: float  # seconds between checkpoints (and heartbeats)
    max_worker_losses: int  # losses of one batch with its worker before the dead letter
    max_oom_retries: int  # more runs of a batch that ran its worker out of memory
    no_workers_timeout: float  # seconds without any worker before worker_error
    custom_metrics_max_series: int  # distinct custom metrics a job keeps

    @classmethod
    def resolve(cls, **given: float | int | None) -> DriverSettings:
        """The settings: those ``given`` (not None), the others from ``batchapi.*``."""
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown driver settings: {', '.join(sorted(unknown))}")
        values = {}
        for f in fields(cls):
            value = given.get(f.name)
            if value is None:
                value = config.get(f.name.replace("_", "-"))
            values[f.name] = float(value) if f.type == "float" else int(value)
        return cls(**values)
