"""Batch outcomes on plain data: attempts, losses, out-of-memory suspects, the dead letter.

No cluster: a :class:`BatchBook` is fed outcomes directly and its counters, retry queue and
checkpoint buffers are read back, then flushed into a real local store.
"""

from __future__ import annotations

import pytest

from dask_batchapi.driver.ledger import Checkpointer, load_final, read_dead_letter
from dask_batchapi.driver.log import DriverLog
from dask_batchapi.driver.outcomes import BatchBook, OutOfMemory
from dask_batchapi.sources.batches import BatchRef
from dask_batchapi.status import JobState
from dask_batchapi.store import JobStore

JOB = "0" * 15 + "1"
ERR = ("ValueError", "bad item", "Traceback (most recent call last):\n  ...\nValueError: bad item")
LOST = ("WorkerLost", "worker tcp://127.0.0.1:1 died", "")


@pytest.fixture
def book(tmp_path):
    store = JobStore(str(tmp_path / "store"))
    ckpt = Checkpointer(store, "api", JOB, run=1)
    state = JobState()
    return BatchBook(
        JOB, state, ckpt, DriverLog("api", JOB, ckpt), max_attempts=3, max_losses=2, max_ooms=0
    )


def ref(index: int) -> BatchRef:
    return BatchRef(index, items=[index * 10, index * 10 + 1])


def test_success_is_recorded_and_forgotten(book):
    book.succeeded(ref(0))
    assert book.state.succeeded == 1 and book.ckpt.succeeded == [0]
    assert not book.retry


def test_failures_retry_until_the_attempts_are_spent(book):
    for _ in range(2):
        book.failed(ref(4), ERR)
        assert [r.index for r in book.retry] == [4] and book.state.dead_lettered == 0
        book.retry.clear()
    book.failed(ref(4), ERR)
    assert not book.retry
    assert book.state.failed == 3 and book.state.dead_lettered == 1
    [record] = book.ckpt.dead_records
    assert record["batch_id"] == f"{JOB}-000004" and record["attempts"] == 3
    assert record["payload"] == [40, 41] and record["error"] == "ValueError: bad item"
    assert record["traceback"].startswith("Traceback")
    assert any("attempt 1 failed" in line for line in book.ckpt.logs)


def test_losses_do_not_spend_attempts_but_have_their_own_budget(book):
    book.lost(ref(1), LOST)
    book.lost(ref(1), LOST)
    assert book.state.lost == 2 and book.state.dead_lettered == 0 and len(book.retry) == 2
    book.lost(ref(1), LOST)  # the third loss is past max_losses=2
    assert book.state.dead_lettered == 1
    [record] = book.ckpt.dead_records
    assert record["attempts"] == 0 and record["worker_losses"] == 3
    assert record["error"].startswith("WorkerLost")


def test_a_counted_loss_is_not_counted_twice(book):
    assert book.count_loss(ref(2)) == 1
    book.lost(ref(2), LOST, counted=True)
    assert book.state.lost == 1 and [r.index for r in book.retry] == [2]


def test_out_of_memory_makes_suspects_that_run_alone_then_blames_one(book):
    book.out_of_memory([ref(1), ref(2), ref(3)], ("MemoryError", "worker killed", ""))
    assert book.state.lost == 3 and all(book.is_suspect(i) for i in (1, 2, 3))
    assert book.suspect_next()
    assert [r.index for r in book.next_retries(8)] == [1]  # a suspect always runs alone
    book.succeeded(ref(1))
    assert not book.is_suspect(1)
    [two] = book.next_retries(8)
    with pytest.raises(OutOfMemory, match=f"batch {JOB}-000002 ran its worker out of memory 2 times"):
        book.out_of_memory([two], ("MemoryError", "worker killed", ""))


def test_retries_come_back_in_chunks(book):
    for i in range(5):
        book.failed(ref(i), ERR)
    assert [r.index for r in book.next_retries(2)] == [0, 1]
    assert [r.index for r in book.next_retries(8)] == [2, 3, 4]
    assert book.next_retries(8) == []


def test_a_flush_makes_outcomes_durable(book):
    book.succeeded(ref(0))
    book.failed(ref(1), ERR)
    book.failed(ref(1), ERR)
    book.failed(ref(1), ERR)
    book.ckpt.flush(book.state)
    final = load_final(book.ckpt.store, "api", JOB)
    assert final.succeeded == {0} and final.dead_lettered == {1}
    [dead] = read_dead_letter(book.ckpt.store, "api", JOB)
    assert dead["batch_id"] == f"{JOB}-000001" and dead["payload"] == [10, 11]
