"""Chunk sizing and driver settings on plain data (no cluster)."""

from __future__ import annotations

import dask
import pytest

from dask_batchapi.driver.chunking import ChunkSizer, max_chunk_batches
from dask_batchapi.driver.settings import DriverSettings
from dask_batchapi.spec.submission import parse_submission


def test_the_first_chunks_measure_with_one_batch():
    assert ChunkSizer(0.25, 2048).size(remaining=10_000, slots=4) == 1


def test_chunks_take_about_the_target_time():
    sizer = ChunkSizer(0.25, 2048)
    sizer.record(0.01)
    assert sizer.size(remaining=None, slots=4) == 25
    sizer.record(0.01)
    assert sizer.average == pytest.approx(0.01)


def test_the_average_moves_with_recent_batches():
    sizer = ChunkSizer(1.0, 2048)
    sizer.record(0.1)
    for _ in range(30):
        sizer.record(0.01)
    assert sizer.average == pytest.approx(0.01, rel=0.05)
    assert sizer.size(remaining=None, slots=1) == pytest.approx(100, rel=0.05)


def test_the_tail_is_spread_over_every_slot_and_never_empty():
    sizer = ChunkSizer(0.25, 2048)
    sizer.record(0.0001)
    assert sizer.size(remaining=40, slots=4) == 10
    assert sizer.size(remaining=3, slots=4) == 1
    assert sizer.size(remaining=0, slots=4) == 1


def test_caps_apply_last():
    sizer = ChunkSizer(10.0, 64)
    sizer.record(0.0)  # instantaneous batches: as large as allowed
    assert sizer.size(remaining=None, slots=2) == 64
    assert sizer.size(remaining=None, slots=2, cap=lambda size, remaining, slots: 5) == 5


def test_item_lists_bound_the_items_per_chunk():
    items = parse_submission({"item_list": {"items": [1], "batch_size": 100}})
    files = parse_submission({"file_path_lister": {"s3_paths": ["s3://b/"], "batch_size": 100}})
    assert max_chunk_batches(items, max_batches=2048, max_items=20_000) == 200
    assert max_chunk_batches(files, max_batches=2048, max_items=20_000) == 2048
    huge = parse_submission({"item_list": {"items": [1], "batch_size": 50_000}})
    assert max_chunk_batches(huge, max_batches=2048, max_items=20_000) == 1


def test_driver_settings_are_arguments_that_fall_back_to_config():
    with dask.config.set({"batchapi.prefetch": 7, "batchapi.chunk-target-seconds": 0.5}):
        settings = DriverSettings.resolve(max_chunk_batches=16)
    assert settings.prefetch == 7 and settings.chunk_target_seconds == 0.5
    assert settings.max_chunk_batches == 16
    assert isinstance(settings.checkpoint_interval, float)
    with pytest.raises(TypeError, match="unknown driver settings: prefetchh"):
        DriverSettings.resolve(prefetchh=2)


def test_a_job_with_nothing_left_to_send_keeps_one_idle_worker():
    """Giving back every idle worker while another is busy stranded the job when the busy one
    died (its chunks came back with no worker left to run them: test_multihost's link cut)."""
    from collections import Counter

    from dask_batchapi.driver.workers import idle_workers

    assert idle_workers(["a", "b"], Counter({"b": 2}), keep="a") == []
    assert idle_workers(["a", "b", "c"], Counter({"c": 1}), keep="b") == ["a"]
    assert idle_workers(["a", "b"], Counter(), keep="z") == ["b"]
    assert idle_workers([], Counter(), keep=None) == []
