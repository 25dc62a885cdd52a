"""Cortex's ``metrics_client``: custom metrics from handler code, aggregated per job.

A handler that names ``metrics_client`` in its ``__init__`` gets a :class:`MetricsClient`, with
Cortex's three calls. It never raises into the handler: a bad call is dropped with one warning
in the job's log. Each worker aggregates what its handler records (counter: sum; gauge: last
value; histogram: count, sum, min, max) and hands it back with each chunk's result
(:meth:`MetricsClient.drain`); the driver folds it into the job's state with
:func:`merge_metrics`, and the status document shows it as ``job_status.custom_metrics``::

    {"name": "rows", "type": "counter", "tags": {"model": "v1"}, "value": 1200}
    {"name": "queue", "type": "gauge", "tags": {}, "value": 3, "time": 1764400000.5}
    {"name": "latency", "type": "histogram", "tags": {}, "count": 40, "sum": 2.1, "min": 0.01, "max": 0.2}
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from typing import Any

from dask_batchapi import config

logger = logging.getLogger("batchapi.metrics")  # warnings land in the job's log

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
DEFAULT_MAX_SERIES = 1000


def _key(entry: dict) -> tuple:
    return entry["name"], entry["type"], tuple(sorted(entry["tags"].items()))


def _fold(old: dict | None, new: dict) -> dict:
    """One series' aggregate of ``old`` and ``new`` (both already aggregates)."""
    if old is None:
        return dict(new)
    kind = new["type"]
    if kind == COUNTER:
        return {**old, "value": old["value"] + new["value"]}
    if kind == GAUGE:
        return dict(new) if new["time"] >= old["time"] else old
    return {
        **old,
        "count": old["count"] + new["count"],
        "sum": old["sum"] + new["sum"],
        "min": min(old["min"], new["min"]),
        "max": max(old["max"], new["max"]),
    }


def merge_metrics(
    total: list[dict] | None, new: list[dict] | None, max_series: int = DEFAULT_MAX_SERIES
) -> list[dict]:
    """Fold a worker's drained metrics into a job's aggregates (sorted by name, type, tags).

    Series beyond ``max_series`` are dropped (the job's state stays small).

    >>> a = [{"name": "n", "type": "counter", "tags": {}, "value": 2}]
    >>> merge_metrics(a, [{"name": "n", "type": "counter", "tags": {}, "value": 3}])[0]["value"]
    5
    """
    series = {_key(e): e for e in total or ()}
    for entry in new or ():
        key = _key(entry)
        if key in series or len(series) < max_series:
            series[key] = _fold(series.get(key), entry)
    return [series[k] for k in sorted(series, key=repr)]


class MetricsClient:
    """Cortex's metrics client for one job on one worker; thread-safe, never raises.

    >>> metrics = MetricsClient()
    >>> metrics.increment("rows", 3, tags={"model": "v1"})
    >>> metrics.drain()
    [{'name': 'rows', 'type': 'counter', 'tags': {'model': 'v1'}, 'value': 3}]
    """

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self._series: dict[tuple, dict] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    @classmethod
    def from_config(cls) -> MetricsClient:
        """A client limited to ``batchapi.custom-metrics-max-series`` series."""
        return cls(int(config.get("custom-metrics-max-series", DEFAULT_MAX_SERIES)))

    def increment(self, metric: str, value: float = 1, tags: dict | None = None) -> None:
        """Add ``value`` to the counter ``metric`` (summed over the job's workers)."""
        self._record(COUNTER, metric, value, tags)

    def gauge(self, metric: str, value: float, tags: dict | None = None) -> None:
        """Set the gauge ``metric`` to ``value`` (the job keeps the last value set)."""
        self._record(GAUGE, metric, value, tags)

    def histogram(self, metric: str, value: float, tags: dict | None = None) -> None:
        """Record one observation of ``metric`` (the job keeps count, sum, min and max)."""
        self._record(HISTOGRAM, metric, value, tags)

    def drain(self) -> list[dict]:
        """This worker's aggregates since the last drain, and forget them."""
        with self._lock:
            series, self._series = self._series, {}
        return list(series.values())

    def _record(self, kind: str, metric: Any, value: Any, tags: Any) -> None:
        try:
            entry = _entry(kind, metric, value, tags)
            with self._lock:
                key = _key(entry)
                if key not in self._series and len(self._series) >= self.max_series:
                    raise ValueError(f"more than {self.max_series} distinct metrics")
                self._series[key] = _fold(self._series.get(key), entry)
        except Exception as exc:  # noqa: BLE001 - Cortex's contract: never raise into the handler
            self._warn(f"metrics_client.{_CALLS[kind]}({metric!r}) dropped: {exc}")

    def _warn(self, message: str) -> None:
        if message in self._warned or len(self._warned) > 100:
            return
        self._warned.add(message)
        try:
            logger.warning(message)
        except Exception:  # noqa: BLE001, S110 - not even logging may raise into the handler
            pass


_CALLS = {COUNTER: "increment", GAUGE: "gauge", HISTOGRAM: "histogram"}


def _entry(kind: str, metric: Any, value: Any, tags: Any) -> dict:
    """One observation as an aggregate; ValueError for what Cortex's client could not send."""
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"the metric name must be a non-empty string, got {metric!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"value must be a number, got {value!r}")
    value = float(value) if not isinstance(value, int) else value
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value!r}")
    if tags is not None and not isinstance(tags, dict):
        raise ValueError(f"tags must be a dict, got {tags!r}")
    # Cortex formats tags as "key:value" strings; values are shown the same way here.
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    entry = {"name": metric, "type": kind, "tags": tags}
    if kind == COUNTER:
        return {**entry, "value": value}
    if kind == GAUGE:
        return {**entry, "value": value, "time": time.time()}
    return {**entry, "count": 1, "sum": value, "min": value, "max": value}
