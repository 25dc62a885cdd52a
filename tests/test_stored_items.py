"""item_list items are stored apart from the job record and streamed by the driver."""

from __future__ import annotations

import json

from conftest import write_project

import dask_batchapi as batchapi
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.store.jobstore import JobStore, StoredItems

SUM_HANDLER = """
    import json, os
    class Handler:
        def __init__(self, config):
            self.out = config["out"]
        def handle_batch(self, payload, batch_id):
            with open(os.path.join(self.out, batch_id), "w") as f:
                json.dump(payload, f)
    """


def test_items_stream_from_the_store_in_order(tmp_path, store_dir):
    out = tmp_path / "out"
    out.mkdir()
    api = batchapi.deploy(write_project(tmp_path / "p", SUM_HANDLER, name="summer"))
    items = [{"n": i} for i in range(23_456)]
    job = api.submit(
        {"item_list": {"items": items, "batch_size": 700}, "config": {"out": str(out)}}
    )
    assert job.wait(timeout=120) == "succeeded"

    job_dir = store_dir / "jobs" / "summer" / job.job_id
    record = json.loads((job_dir / "job.json").read_text())
    assert "items" not in record["submission"]["item_list"]
    assert record["submission"]["item_list"] == {"batch_size": 700, "item_count": 23_456}
    assert (job_dir / "job.json").stat().st_size < 4096  # the record no longer grows with items
    segments = sorted(p.name for p in (job_dir / "items").iterdir())
    assert segments == ["00000000.json", "00000001.json", "00000002.json"]

    # every batch got exactly its slice, in order
    batches = sorted(out.iterdir())
    assert len(batches) == 34  # ceil(23456 / 700)
    seen = [v for p in batches for v in json.loads(p.read_text())]
    assert seen == items
    assert job.status["job_status"]["total_batch_count"] == 34


def test_stored_items_are_a_sized_reiterable(tmp_path):
    store = JobStore(str(tmp_path / "store"))
    job_id = "0" * 16
    store.put_items("api", job_id, list(range(25)), per_segment=10)
    items = StoredItems(store, "api", job_id, 25)
    assert len(items) == 25
    assert list(items) == list(range(25)) == list(items)


def test_records_with_inline_items_still_parse(tmp_path):
    """Jobs written before items were stored apart keep their items in the record."""
    record = {
        "api_name": "api",
        "job_id": "0" * 16,
        "created_time": "2026-01-01T00:00:00.000Z",
        "submission": {"item_list": {"items": [1, 2, 3], "batch_size": 2}, "workers": 1},
    }
    assert JobRecord.from_dict(record).submission.source.items == [1, 2, 3]
