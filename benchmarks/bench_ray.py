"""(a) Ray Data baseline for the no-op throughput benchmark (see bench_throughput.py).

Run with the Ray venv's python (made by ``bash benchmarks/ray_env.sh``), not the project's:

    benchmarks/.env-ray/bin/python benchmarks/bench_ray.py --batches 20000 --repeats 3 \
        --batch-size 10 --workers 2

Prints exactly one JSON line on stdout:
``{"ray": version, "rates": [batches/s per repeat], "seconds": [...], "setup_s": ..., "notes": ...}``;
everything else (Ray's own logging) goes to stderr.

Method, per repeat: the driver holds a list of n * batch_size ints (built before the clock, as
the item list / batches are for the other baselines). The clock runs from
``ray.data.from_items(items)`` (which puts the items in the object store) through
``map_batches(NoOp, batch_size=batch_size, compute=ActorPoolStrategy(size=workers),
num_cpus=0.5)`` to
``.materialize()``, i.e. until every batch went through the callable class and its output is
in the object store. The actor pool is started inside each execution, so its start-up is
inside the clock (as the worker plugin set-up is for dask-batchapi). ``num_cpus=0.5`` per
actor: with 1 CPU each, Ray Data hangs on a 2-CPU node (no CPU left for its other tasks).

``ray.init(num_cpus=workers)`` happens once, before any repeat (``setup_s``). One untimed
warm-up run on a small dataset uses a counting callable (one output row per call, holding the
batch's length) to check that the callable sees exactly n batches of batch_size rows; each
timed repeat checks that the output has n * batch_size rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# Ray must not write to our stdout: keep the real stdout for the JSON line and point fd 1
# (inherited by Ray's processes and used by any print) at stderr.
_STDOUT_FD = os.dup(1)
os.dup2(2, 1)
sys.stdout = sys.stderr

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402
import ray.data  # noqa: E402
from ray.data import ActorPoolStrategy  # noqa: E402

ACTOR_CPUS = 0.5


class NoOp:
    """The no-op handler: returns the batch it was given."""

    def __call__(self, batch):
        return batch


class CountBatches:
    """Verification only: one output row per call, holding the batch's length."""

    def __call__(self, batch):
        size = len(next(iter(batch.values())))
        return {"rows": np.array([size], dtype=np.int64)}


def _configure_data_context() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    for name in ("enable_operator_progress_bars", "enable_rich_progress_bars"):
        if hasattr(ctx, name):
            setattr(ctx, name, False)
    if hasattr(ctx, "execution_options"):
        ctx.execution_options.verbose_progress = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


def run_once(items: list[int], batch_size: int, workers: int, fn=NoOp):
    ds = ray.data.from_items(items)
    ds = ds.map_batches(
        fn,
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=workers),
        num_cpus=ACTOR_CPUS,
    )
    return ds.materialize()


def verify(n: int, batch_size: int, workers: int) -> None:
    items = list(range(n * batch_size))
    out = run_once(items, batch_size, workers, fn=CountBatches)
    sizes = [row["rows"] for row in out.iter_rows()]
    if len(sizes) != n or any(s != batch_size for s in sizes):
        raise RuntimeError(
            f"callable saw {len(sizes)} batches (sizes {sorted(set(sizes))}), "
            f"expected {n} of {batch_size}"
        )
    print(f"bench_ray: verified {n} calls of {batch_size} rows", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup-batches", type=int, default=1_000)
    parser.add_argument(
        "--object-store-memory", type=float, default=2e9, help="bytes for Ray's object store"
    )
    parser.add_argument("--quick", action="store_true", help="2,000 batches, 1 repeat")
    opts = parser.parse_args()
    if opts.quick:
        opts.batches, opts.repeats = 2_000, 1
    n, size, workers = opts.batches, opts.batch_size, opts.workers

    start = time.perf_counter()
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        object_store_memory=int(opts.object_store_memory),
        log_to_driver=False,
        logging_level="WARNING",
    )
    _configure_data_context()
    setup_s = time.perf_counter() - start

    try:
        verify(min(n, opts.warmup_batches), size, workers)  # also the warm-up

        items = list(range(n * size))
        seconds = []
        for i in range(opts.repeats):
            t0 = time.perf_counter()
            out = run_once(items, size, workers)
            elapsed = time.perf_counter() - t0
            rows = out.count()
            if rows != n * size:
                raise RuntimeError(f"repeat {i}: {rows} output rows, expected {n * size}")
            del out
            seconds.append(elapsed)
            print(
                f"bench_ray: repeat {i}: {elapsed:.2f}s, {n / elapsed:.0f} batches/s",
                file=sys.stderr,
            )
    finally:
        ray.shutdown()

    rates = [n / s for s in seconds]
    result = {
        "ray": ray.__version__,
        "rates": [round(r, 1) for r in rates],
        "seconds": [round(s, 3) for s in seconds],
        "setup_s": round(setup_s, 3),
        "median_rate": round(statistics.median(rates), 1),
        "batches": n,
        "batch_size": size,
        "workers": workers,
        "notes": (
            f"ray.init(num_cpus={workers}) once (setup_s); per repeat: from_items({n * size} ints)"
            f" -> map_batches(callable class NoOp returning the batch, batch_size={size},"
            f" compute=ActorPoolStrategy(size={workers}), num_cpus={ACTOR_CPUS}) -> materialize(); actor-pool"
            " start-up inside the clock; warm-up run verified the callable saw every batch"
            f" ({min(n, opts.warmup_batches)} calls of {size} rows)"
        ),
    }
    os.write(_STDOUT_FD, (json.dumps(result) + "\n").encode())


if __name__ == "__main__":
    main()
