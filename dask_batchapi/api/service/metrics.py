"""``GET /metrics``: the store's jobs in Prometheus' text format (prometheus-client).

A collector of its own registry reads the store at each scrape, so every service on a store
reports the same numbers and nothing is kept between scrapes. Series, labelled by ``api``:

- ``batchapi_jobs{api,status}``: jobs per status (``interrupted`` counts apart: the job's
  driver died while it was active)
- ``batchapi_batches_succeeded_total``, ``batchapi_batch_failures_total`` (failed handler
  attempts, Cortex's ``failed``), ``batchapi_batches_dead_lettered_total``,
  ``batchapi_batches_lost_total`` (runs lost with their worker): sums over the API's jobs in the
  store (deleting an API or its jobs resets them, which Prometheus reads as a counter reset)
- ``batchapi_batch_duration_seconds``: handler time per batch attempt. ``_sum`` and ``_count``
  are exact. The store keeps no per-batch durations, only each job's total and count, so the
  buckets place each job's attempts at that job's mean: the histogram is exact across jobs and
  blind within one.
- ``batchapi_batches_in_queue``, ``batchapi_workers_held``, ``batchapi_workers_asked``: over
  the API's active jobs; ``batchapi_jobs_queued``: active jobs waiting for a worker
- ``batchapi_custom_<name>``: the handlers' own metrics (``job_status.custom_metrics``)
  summed over the API's jobs, labelled by their tags
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from dask_batchapi.api.client import BatchClient
from dask_batchapi.status import JobStatus

logger = logging.getLogger(__name__)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_COUNTERS = {
    "succeeded": ("batches_succeeded", "Batches that succeeded."),
    "failed": ("batch_failures", "Failed handler attempts (Cortex's batch_metrics.failed)."),
    "dead_lettered": ("batches_dead_lettered", "Batches that ended in the dead letter."),
    "lost": ("batches_lost", "Batch runs lost with their worker (not handler failures)."),
}
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
_ACTIVE = {JobStatus.PENDING.value, JobStatus.ENQUEUING.value, JobStatus.RUNNING.value}


class StoreCollector:
    """Reads every API's jobs from the store at each scrape."""

    def __init__(self, client: BatchClient):
        self.client = client

    def collect(self) -> Iterator[Metric]:
        jobs_by_api = {
            api.name: self.client.list_jobs(api.name, skip_unreadable=True)
            for api in self.client.list_apis()
        }
        yield _jobs_by_status(jobs_by_api)
        yield from _batch_counters(jobs_by_api)
        yield _duration_histogram(jobs_by_api)
        yield from _active_gauges(jobs_by_api)
        yield from custom_metrics(jobs_by_api)


def registry_for(client: BatchClient) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(client))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _status(job: dict) -> str:
    return "interrupted" if job.get("interrupted") else str(job.get("status"))


def _jobs_by_status(jobs_by_api: dict[str, list[dict]]) -> Metric:
    family = GaugeMetricFamily("batchapi_jobs", "Jobs in the store.", labels=["api", "status"])
    for api, jobs in jobs_by_api.items():
        counts = dict.fromkeys([s.value for s in JobStatus], 0)
        for job in jobs:
            counts[_status(job)] = counts.get(_status(job), 0) + 1
        for status, n in counts.items():
            family.add_metric([api, status], n)
    return family


def _batch_counters(jobs_by_api: dict[str, list[dict]]) -> Iterator[Metric]:
    for key, (name, doc) in _COUNTERS.items():
        family = CounterMetricFamily(f"batchapi_{name}", doc, labels=["api"])
        for api, jobs in jobs_by_api.items():
            family.add_metric(
                [api], sum((j.get("batch_metrics") or {}).get(key) or 0 for j in jobs)
            )
        yield family


def _duration_histogram(jobs_by_api: dict[str, list[dict]]) -> Metric:
    family = HistogramMetricFamily(
        "batchapi_batch_duration_seconds",
        "Handler time per batch attempt; _sum and _count exact, buckets from each job's mean.",
        labels=["api"],
    )
    for api, jobs in jobs_by_api.items():
        counts, total = [0] * len(BUCKETS), 0.0
        for job in jobs:
            attempts, mean = _attempts(job)
            total += attempts * (mean or 0.0)
            for i, bound in enumerate(BUCKETS):
                counts[i] += attempts if mean is not None and mean <= bound else 0
        n = sum(_attempts(j)[0] for j in jobs)
        buckets = [(str(b), c) for b, c in zip(BUCKETS, counts, strict=True)] + [("+Inf", n)]
        family.add_metric([api], buckets, total)
    return family


def _attempts(job: dict) -> tuple[int, float | None]:
    """Timed attempts of a job (succeeded + failed) and their mean handler time."""
    metrics = job.get("batch_metrics") or {}
    mean = metrics.get("average_time_per_batch")
    if mean is None:
        return 0, None
    return (metrics.get("succeeded") or 0) + (metrics.get("failed") or 0), float(mean)


def _active_gauges(jobs_by_api: dict[str, list[dict]]) -> Iterator[Metric]:
    queue = GaugeMetricFamily("batchapi_batches_in_queue", "Batches not yet run.", labels=["api"])
    held = GaugeMetricFamily("batchapi_workers_held", "Workers leased to jobs.", labels=["api"])
    asked = GaugeMetricFamily("batchapi_workers_asked", "Workers jobs asked for.", labels=["api"])
    waiting = GaugeMetricFamily(
        "batchapi_jobs_queued", "Active jobs waiting for a worker.", labels=["api"]
    )
    for api, jobs in jobs_by_api.items():
        active = [j for j in jobs if _status(j) in _ACTIVE]
        queue.add_metric([api], sum(j.get("batches_in_queue") or 0 for j in active))
        held.add_metric(
            [api], sum((j.get("worker_counts") or {}).get("running", 0) for j in active)
        )
        asked.add_metric([api], sum(j.get("workers") or 0 for j in active))
        waiting.add_metric([api], sum(1 for j in active if j.get("queue_position") is not None))
    yield from (queue, held, asked, waiting)


def custom_metrics(jobs_by_api: dict[str, list[dict]]) -> Iterator[Metric]:
    """The handlers' metrics, aggregated per API and tag set over the API's jobs: counters
    summed; a gauge's last value (newest job first wins); histograms' count and sum summed."""
    families: dict[str, Metric] = {}
    series: dict[tuple, dict] = defaultdict(dict)
    for api, jobs in jobs_by_api.items():
        for job in jobs:  # newest first
            for entry in job.get("custom_metrics") or []:
                _add_custom(series, api, entry)
    for (name, kind, labels), values in series.items():
        keys, vals = [k for k, _ in labels], [v for _, v in labels]
        family = families.get(name)
        if family is None:
            family = families[name] = _custom_family(name, kind, keys)
        if family.type != _PROM_TYPES[kind] or [*keys] != _label_names(family, keys):
            continue  # one name with two types or label sets: keep the first
        if kind == "histogram":
            family.add_metric(vals, count_value=values["count"], sum_value=values["sum"])
        else:
            family.add_metric(vals, values["value"])
    yield from families.values()


_PROM_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "summary"}


def _custom_family(name: str, kind: str, keys: list[str]) -> Metric:
    doc = f"Handler metric {name!r} ({kind}), per API and tags."
    full = f"batchapi_custom_{name}"
    if kind == "counter":
        return CounterMetricFamily(full, doc, labels=keys)
    if kind == "gauge":
        return GaugeMetricFamily(full, doc, labels=keys)
    from prometheus_client.core import SummaryMetricFamily

    return SummaryMetricFamily(full, doc, labels=keys)


def _label_names(family: Metric, keys: list[str]) -> list[str]:
    return list(family.samples[0].labels) if family.samples else keys


def _add_custom(series: dict, api: str, entry: dict) -> None:
    kind = entry.get("type")
    if kind not in _PROM_TYPES or not isinstance(entry.get("name"), str):
        return
    tags = entry.get("tags") or {}
    labels = [("api", api)] + sorted(
        (_clean(str(k)), str(v)) for k, v in tags.items() if _clean(str(k)) != "api"
    )
    values = series[(_clean(entry["name"]), kind, tuple(labels))]
    if kind == "counter":
        values["value"] = values.get("value", 0) + (entry.get("value") or 0)
    elif kind == "gauge":
        values.setdefault("value", entry.get("value") or 0)
    else:
        values["count"] = values.get("count", 0) + (entry.get("count") or 0)
        values["sum"] = values.get("sum", 0) + (entry.get("sum") or 0)


def _clean(name: str) -> str:
    """A Prometheus name: letters, digits and ``_`` (a leading digit gets a ``_``)."""
    cleaned = _NAME_BAD.sub("_", name)
    return f"_{cleaned}" if cleaned[:1].isdigit() else cleaned
