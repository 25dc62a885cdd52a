"""(b) Parallel efficiency on CPU-bound batches: n batches of t seconds of CPU on 2 workers.

efficiency = ideal / measured, ideal = n * t / workers. The handler spins on
``time.thread_time()`` (CPU time, not wall time, and not ``sleep``), so CPU that the scheduler,
the driver or anything else takes away from the workers counts as lost efficiency, as it would
for real CPU work.

* dask-batchapi: one job, ``batch_size`` 1, ``workers`` 2, driver in this process; clock from
  ``submit`` to the final status in the store (so it includes job start and finish).
* raw Dask: ``client.map(busy, range(n))`` + ``gather`` on the same cluster.
* ProcessPoolExecutor(2): the same ``busy`` calls, ``chunksize`` 1 — what this machine gives
  right now, the ceiling for both (other processes on a shared machine take CPU from all).

Also reported: the share of the workers' time spent inside tasks (from Dask's task stream; for
dask-batchapi the chunk tasks, so it includes the package's per-batch work on the worker but
not the gaps between tasks), and the share of the machine's CPU other processes used meanwhile.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import cloudpickle
from _common import (
    BUSY_HANDLER,
    WORKERS,
    CpuMeter,
    Row,
    Stat,
    job_final_status,
    run_job_in_process,
    settle,
    task_busy_share,
    verdict,
)
from distributed import get_task_stream

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def busy(_item, seconds: float):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def time_batchapi(client, api, n: int, seconds: float) -> tuple[float, float]:
    """(wall seconds, workers' share of time inside chunk tasks)."""
    submission = {
        "workers": WORKERS,
        "item_list": {"items": list(range(n)), "batch_size": 1},
        "config": {"seconds": seconds},
    }
    with get_task_stream(client) as stream:
        elapsed, job = run_job_in_process(api, submission)
    status = job_final_status(job)
    if status != "succeeded":
        raise RuntimeError(f"dask-batchapi job {job.job_id} ended {status}")
    return elapsed, task_busy_share(stream.data, "run_chunk", WORKERS, elapsed)


def time_raw_dask(client, n: int, seconds: float) -> tuple[float, float]:
    with get_task_stream(client) as stream:
        start = time.perf_counter()
        futures = client.map(busy, range(n), seconds=seconds, pure=False)
        client.gather(futures)
        elapsed = time.perf_counter() - start
    del futures
    return elapsed, task_busy_share(stream.data, "busy", WORKERS, elapsed)


def time_pool(pool: ProcessPoolExecutor, n: int, seconds: float) -> float:
    start = time.perf_counter()
    for _ in pool.map(busy, range(n), [seconds] * n, chunksize=1):
        pass
    return time.perf_counter() - start


def run(client, api_factory, opts) -> list[Row]:
    """``opts``: n, seconds, repeats, log."""
    n, seconds = opts["n"], opts["seconds"]
    ideal = n * seconds / WORKERS
    api = api_factory("bench-busy", BUSY_HANDLER)
    time_batchapi(client, api, 4, 0.001)  # warm
    settle(client)
    eff: dict[str, list[float]] = {k: [] for k in ("batchapi", "raw", "pool")}
    share: dict[str, list[float]] = {"batchapi": [], "raw": []}
    foreign: list[float] = []
    spawn = multiprocessing.get_context("spawn")  # not fork: this process has Dask's threads
    with ProcessPoolExecutor(WORKERS, mp_context=spawn) as pool:
        list(pool.map(busy, range(WORKERS * 2), [0.001] * WORKERS * 2))  # start the processes
        for i in range(opts["repeats"]):
            with CpuMeter() as meter:
                wall, busy_share = time_batchapi(client, api, n, seconds)
                eff["batchapi"].append(ideal / wall)
                share["batchapi"].append(busy_share)
                settle(client)
                wall, busy_share = time_raw_dask(client, n, seconds)
                eff["raw"].append(ideal / wall)
                share["raw"].append(busy_share)
                settle(client)
                eff["pool"].append(ideal / time_pool(pool, n, seconds))
            foreign.append(meter.foreign)
            opts["log"](
                f"  (b) run {i + 1}: efficiency batchapi {eff['batchapi'][-1]:.3f}, "
                f"raw Dask {eff['raw'][-1]:.3f}, pool {eff['pool'][-1]:.3f}; "
                f"other processes used {meter.foreign:.0%} of the machine"
            )
    return _rows(n, seconds, ideal, eff, share, foreign)


def _rows(n, seconds, ideal, eff, share, foreign) -> list[Row]:
    case = f"{n} batches x {seconds * 1000:.0f} ms CPU, ideal {ideal:.2f} s"
    ours, raw, pool = Stat(eff["batchapi"]), Stat(eff["raw"]), Stat(eff["pool"])
    return [
        Row(
            "b",
            case,
            "dask-batchapi",
            "efficiency",
            ours,
            ratio=f"{ours.median / raw.median:.2f}x raw; {ours.median / pool.median:.2f}x pool",
            target=">=0.9 (later 0.95)",
            verdict=f"{verdict(ours.median >= 0.9)} (0.9); {verdict(ours.median >= 0.95)} (0.95)",
        ),
        Row("b", case, "raw Dask client.map", "efficiency", raw, ratio="1x"),
        Row(
            "b",
            case,
            f"ProcessPoolExecutor({WORKERS})",
            "efficiency",
            pool,
            ratio=f"{pool.median / raw.median:.2f}x raw",
            verdict="machine ceiling now",
        ),
        Row(
            "b",
            "workers' time inside tasks",
            "dask-batchapi",
            "share",
            Stat(share["batchapi"]),
            verdict="info",
        ),
        Row(
            "b",
            "workers' time inside tasks",
            "raw Dask client.map",
            "share",
            Stat(share["raw"]),
            verdict="info",
        ),
        Row(
            "b",
            "CPU used by other processes",
            "(background)",
            "share of machine",
            Stat(foreign),
            spec=".0%",
            verdict="info",
        ),
    ]
