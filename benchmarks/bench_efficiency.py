"""(b) Parallel efficiency on CPU-bound batches: n batches of t seconds of CPU on 2 workers.

efficiency = ideal / measured, ideal = n * t / workers. The handler spins on
``time.thread_time()`` (CPU time, not wall time, and not ``sleep``), so CPU that the scheduler,
the driver or anything else takes away from the workers counts as lost efficiency, as it would
for real CPU work.

* dask-batchapi: one job, ``batch_size`` 1, ``workers`` 2, driver in this process; clock from
  ``submit`` to the final status in the store (so it includes job start and finish).
* raw Dask: ``client.map(busy, range(n))`` + ``gather`` on the same cluster.
"""

from __future__ import annotations

import sys
import time

import cloudpickle

from _common import (
    BUSY_HANDLER,
    WORKERS,
    Row,
    Stat,
    job_final_status,
    run_job_in_process,
    settle,
    verdict,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def busy(_item, seconds: float):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def time_batchapi(api, n: int, seconds: float) -> float:
    submission = {
        "workers": WORKERS,
        "item_list": {"items": list(range(n)), "batch_size": 1},
        "config": {"seconds": seconds},
    }
    elapsed, job = run_job_in_process(api, submission)
    status = job_final_status(job)
    if status != "succeeded":
        raise RuntimeError(f"dask-batchapi job {job.job_id} ended {status}")
    return elapsed


def time_raw_dask(client, n: int, seconds: float) -> float:
    start = time.perf_counter()
    futures = client.map(busy, range(n), seconds=seconds, pure=False)
    client.gather(futures)
    elapsed = time.perf_counter() - start
    del futures
    return elapsed


def run(client, api_factory, opts) -> list[Row]:
    """``opts``: n, seconds, repeats, log."""
    n, seconds = opts["n"], opts["seconds"]
    ideal = n * seconds / WORKERS
    api = api_factory("bench-busy", BUSY_HANDLER)
    time_batchapi(api, 4, 0.001)  # warm
    settle(client)
    eff: dict[str, list[float]] = {"batchapi": [], "raw": []}
    for i in range(opts["repeats"]):
        eff["batchapi"].append(ideal / time_batchapi(api, n, seconds))
        settle(client)
        eff["raw"].append(ideal / time_raw_dask(client, n, seconds))
        settle(client)
        opts["log"](
            f"  (b) run {i + 1}: batchapi {eff['batchapi'][-1]:.3f}, raw Dask {eff['raw'][-1]:.3f}"
        )
    case = f"{n} batches x {seconds * 1000:.0f} ms CPU, ideal {ideal:.2f} s"
    ours, raw = Stat(eff["batchapi"]), Stat(eff["raw"])
    return [
        Row(
            "b",
            case,
            "dask-batchapi",
            "efficiency",
            ours,
            ratio=f"{ours.median / raw.median:.3f}x raw Dask",
            target=">=0.9 (later 0.95)",
            verdict=f"{verdict(ours.median >= 0.9)} (0.9); {verdict(ours.median >= 0.95)} (0.95)",
        ),
        Row("b", case, "raw Dask client.map", "efficiency", raw, ratio="1x"),
    ]
