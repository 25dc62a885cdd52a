"""(a) Throughput of no-op batches: dask-batchapi vs raw Dask vs a process pool.

All three run on the same 2-core machine with the same parallelism (2 processes, 1 thread
each): dask-batchapi and raw Dask on one LocalCluster (2 workers x 1 thread), the process pool
while that cluster idles.

* dask-batchapi: ``api.submit(item_list of n*10 items, batch_size 10, workers 2)`` with the
  driver on a thread of this process (``cluster=client``); clock from ``submit`` to the final
  status written in the store. Includes everything a job does: job record, plugin
  registration on both workers, handler import, ledger checkpoints, plugin teardown.
* raw Dask: ``client.map(noop, batches, pure=False)`` then ``client.gather`` (one task per batch).
* process pool, one task per batch: ``ProcessPoolExecutor(2).map(noop, batches)`` (``chunksize``
  1, the default, as the issue measured it: ~5,000 batches/s), pool warmed up first.
* process pool, hand-chunked: the same with ``chunksize=n // 16`` — what a process pool does when
  someone tunes it for no-op batches; no retries, no per-batch outcome, no dead letter.
* Ray Data (20,000 batches): ``bench_ray.py`` in its own environment (``bash
  benchmarks/ray_env.sh``; Ray is not a dependency of the package), ``map_batches`` over a
  callable class on 2 actors of 0.5 CPU each; run after the others, while the Dask cluster idles.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import cloudpickle
from _common import (
    HERE,
    NOOP_HANDLER,
    WORKERS,
    CpuMeter,
    Row,
    Stat,
    job_final_status,
    run_job_in_process,
    settle,
    verdict,
)

BATCH_SIZE = 10

# Dask workers cannot import this script's module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def noop(batch):
    return None


def make_batches(n: int) -> list[list[int]]:
    return [list(range(i * BATCH_SIZE, (i + 1) * BATCH_SIZE)) for i in range(n)]


def time_batchapi(api, n: int) -> float:
    items = list(range(n * BATCH_SIZE))
    seconds, job = run_job_in_process(
        api, {"workers": WORKERS, "item_list": {"items": items, "batch_size": BATCH_SIZE}}
    )
    status = job_final_status(job)
    if status != "succeeded":
        raise RuntimeError(f"dask-batchapi job {job.job_id} ended {status}")
    return seconds


def time_raw_dask(client, n: int) -> float:
    batches = make_batches(n)
    start = time.perf_counter()
    futures = client.map(noop, batches, pure=False)
    client.gather(futures)
    seconds = time.perf_counter() - start
    del futures
    return seconds


def time_pool(pool: ProcessPoolExecutor, n: int, tuned: bool = True) -> float:
    batches = make_batches(n)
    chunksize = max(1, n // (WORKERS * 8)) if tuned else 1
    start = time.perf_counter()
    for _ in pool.map(noop, batches, chunksize=chunksize):
        pass
    return time.perf_counter() - start


def run(client, api_factory, opts) -> list[Row]:
    """``opts``: sizes [(n, raw_repeats)], repeats, log."""
    api = api_factory("bench-noop", NOOP_HANDLER)
    rows: list[Row] = []
    # spawn, not fork: this process runs the Dask client's threads
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=spawn) as pool:
        list(pool.map(noop, range(WORKERS * 4)))  # start and warm the pool's processes
        time_batchapi(api, 50)  # warm: first-job imports in the driver and on the workers
        settle(client)
        for n, raw_repeats in opts["sizes"]:
            rates: dict[str, list[float]] = {"batchapi": [], "raw": [], "pool": [], "pool1": []}
            foreign: list[float] = []
            for i in range(opts["repeats"]):
                # interleaved, so slow drift of a shared machine hits all three alike
                with CpuMeter() as meter:
                    rates["batchapi"].append(n / time_batchapi(api, n))
                    settle(client)
                    if i < raw_repeats:
                        rates["raw"].append(n / time_raw_dask(client, n))
                        settle(client)
                    rates["pool1"].append(n / time_pool(pool, n, tuned=False))
                    rates["pool"].append(n / time_pool(pool, n))
                foreign.append(meter.foreign)
                opts["log"](
                    f"  (a) n={n} run {i + 1}: batchapi {rates['batchapi'][-1]:.0f}/s"
                    + (f", raw Dask {rates['raw'][-1]:.0f}/s" if i < raw_repeats else "")
                    + f", pool {rates['pool1'][-1]:.0f}/s (chunked {rates['pool'][-1]:.0f}/s); "
                    f"other processes used {meter.foreign:.0%} of the machine"
                )
            if n >= opts.get("ray_from", 20000):
                rates["ray"] = time_ray(n, opts["repeats"], opts["log"])
            rows += _rows(n, rates)
            rows.append(
                Row(
                    "a",
                    f"{n:,}: CPU used by other processes",
                    "(background)",
                    "share of machine",
                    Stat(foreign),
                    spec=".0%",
                    verdict="info",
                )
            )
    return rows


RAY_PYTHON = HERE / ".env-ray" / "bin" / "python"


def time_ray(n: int, repeats: int, log) -> list[float]:
    """Ray Data's batches/s per repeat, from bench_ray.py in Ray's own environment; [] when
    that environment is missing (``bash benchmarks/ray_env.sh`` makes it)."""
    if not RAY_PYTHON.exists():
        log("  (a) Ray Data not measured: run `bash benchmarks/ray_env.sh` first")
        return []
    cmd = [str(RAY_PYTHON), str(HERE / "bench_ray.py"), "--batches", str(n)]
    cmd += ["--repeats", str(repeats), "--batch-size", str(BATCH_SIZE), "--workers", str(WORKERS)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        log(f"  (a) Ray Data failed ({out.returncode}): {out.stderr[-500:]}")
        return []
    result = json.loads(lines[-1])
    log(
        f"  (a) n={n} Ray Data {result['ray']}: " + ", ".join(f"{r:.0f}/s" for r in result["rates"])
    )
    return list(result["rates"])


def _rows(n: int, rates: dict[str, list[float]]) -> list[Row]:
    case = f"{n:,} no-op batches x {BATCH_SIZE} items"
    ours, raw = Stat(rates["batchapi"]), Stat(rates["raw"])
    pool, pool1, ray = Stat(rates["pool"]), Stat(rates["pool1"]), Stat(rates.get("ray", []))
    vs_raw = ours.median / raw.median if raw.values else float("nan")
    vs_pool1, vs_pool = ours.median / pool1.median, ours.median / pool.median
    ratio = f"{vs_raw:.1f}x raw Dask; {vs_pool1:.2f}x pool; {vs_pool:.2f}x chunked pool"
    target = ">=10x raw, >=1x pool"
    verdicts = f"{verdict(vs_raw >= 10)} (10x raw); {verdict(vs_pool1 >= 1)} (pool)"
    if ray.values:
        vs_ray = ours.median / ray.median
        ratio += f"; {vs_ray:.1f}x Ray Data"
        target += ", >=5x Ray"
        verdicts += f"; {verdict(vs_ray >= 5)} (5x Ray)"
    rows = [
        Row(
            "a",
            case,
            "dask-batchapi",
            "batches/s",
            ours,
            spec=".0f",
            ratio=ratio,
            target=target,
            verdict=verdicts,
        ),
        Row("a", case, "raw Dask client.map", "batches/s", raw, spec=".0f", ratio="1x"),
        Row(
            "a",
            case,
            f"ProcessPoolExecutor({WORKERS}), a task per batch",
            "batches/s",
            pool1,
            spec=".0f",
            ratio=f"{pool1.median / raw.median:.1f}x raw Dask" if raw.values else "",
        ),
        Row(
            "a",
            case,
            f"ProcessPoolExecutor({WORKERS}), chunksize n/16",
            "batches/s",
            pool,
            spec=".0f",
            ratio=f"{pool.median / raw.median:.1f}x raw Dask" if raw.values else "",
            verdict="info (no per-batch accounting)",
        ),
    ]
    if ray.values:
        rows.append(
            Row(
                "a",
                case,
                "Ray Data map_batches (2 actors)",
                "batches/s",
                ray,
                spec=".0f",
                ratio=f"{ray.median / raw.median:.1f}x raw Dask" if raw.values else "",
            )
        )
    return rows
