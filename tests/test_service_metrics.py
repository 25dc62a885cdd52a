"""What ``/metrics`` makes of status documents: the dashboard's rows and the Prometheus text,
from documents shaped like the store's (custom metrics as issue 14 writes them)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from dask_batchapi.api.service.dashboard import job_row
from dask_batchapi.api.service.metrics import custom_metrics


def _job(job_id: str, status: str, **extra) -> dict:
    return {
        "job_id": job_id,
        "api_name": "a",
        "status": status,
        "workers": 4,
        "start_time": "2026-01-01T00:00:00.000000Z",
        "end_time": None,
        "total_batch_count": 10,
        "batch_metrics": {
            "succeeded": 5,
            "failed": 1,
            "dead_lettered": 0,
            "average_time_per_batch": 0.2,
        },
        "worker_counts": {"running": 2},
        **extra,
    }


def _samples(families) -> dict:
    text = "".join(_exposition(f) for f in families)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _exposition(family) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    class One:
        def collect(self):
            yield family

    registry = CollectorRegistry()
    registry.register(One())
    return generate_latest(registry).decode()


def test_custom_metrics_sum_counters_keep_the_newest_gauge_and_sum_histograms():
    newer = _job("2", "running", custom_metrics=[
        {"name": "rows", "type": "counter", "tags": {"model": "x"}, "value": 3},
        {"name": "temp", "type": "gauge", "tags": {}, "value": 40},
        {"name": "latency", "type": "histogram", "tags": {}, "count": 2, "sum": 0.5, "min": 0.1, "max": 0.4},
    ])  # fmt: skip
    older = _job("1", "succeeded", custom_metrics=[
        {"name": "rows", "type": "counter", "tags": {"model": "x"}, "value": 4},
        {"name": "temp", "type": "gauge", "tags": {}, "value": 10},
        {"name": "latency", "type": "histogram", "tags": {}, "count": 1, "sum": 0.25},
        {"name": "bad name!", "type": "counter", "tags": {"api": "spoof"}, "value": 1},
        {"name": "x", "type": "unknown-type", "value": 1},
    ])  # fmt: skip
    samples = _samples(custom_metrics({"a": [newer, older]}))
    assert samples[("batchapi_custom_rows_total", (("api", "a"), ("model", "x")))] == 7
    assert samples[("batchapi_custom_temp", (("api", "a"),))] == 40
    assert samples[("batchapi_custom_latency_count", (("api", "a"),))] == 3
    assert samples[("batchapi_custom_latency_sum", (("api", "a"),))] == 0.75
    assert samples[("batchapi_custom_bad_name__total", (("api", "a"),))] == 1  # tag can't spoof api
    assert not any(name.startswith("batchapi_custom_x") for name, _ in samples)


def test_jobs_without_custom_metrics_give_none():
    assert list(custom_metrics({"a": [_job("1", "running")]})) == []


def test_job_row_has_progress_rate_eta_and_held_and_asked_workers():
    row = job_row(_job("1", "running", queue_position=None), now=1767225610.0)  # 10 s in
    assert (row["done"], row["total"], row["percent"]) == (5, 10, 50)
    assert row["rate"] == 0.5 and row["eta"] == 10.0
    assert (row["workers_held"], row["workers_asked"]) == (2, 4)
    queued = job_row(_job("2", "pending", queue_position=3, worker_counts={"running": 0}))
    assert queued["queue_position"] == 3 and queued["workers_held"] == 0
