"""Cost of poison item isolation: a job with 0.1% poison items against the same job without.

Three variants of one job (20,000 items, ``batch_size`` 100, 200 batches; the handler sleeps
1 ms per call plus 0.1 ms per item, so its time is the work and a busy machine barely skews it),
each run ``--repeats`` times on one shared 2-worker LocalCluster, in turn:

* ``clean``: no poison item, isolation off (the baseline);
* ``isolate, clean``: no poison item, ``isolate_items`` on (what merely turning it on costs);
* ``isolate, 0.1% poison``: 20 poison items (seeded positions, in distinct batches),
  ``isolate_items`` on, ``max_receive_count`` 1.

Prints a markdown table: medians of the job wall times (submit to final status), their ratio
to the baseline, and the extra handler calls per poison item against ``2 * log2(batch_size)``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_isolation.py --repeats 5
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from distributed import Client, LocalCluster

import dask_batchapi as batchapi

ITEMS, BATCH, POISON = 20_000, 100, 20

HANDLER = """
    import time

    class Handler:
        def __init__(self, config):
            self.poison = set(config["poison"])
            self.calls = config["calls"]

        def handle_batch(self, payload):
            with open(self.calls, "a") as f:  # one byte per call: the calls are counted
                f.write(".")
            time.sleep(0.001 + 0.0001 * len(payload))
            for item in payload:
                if item in self.poison:
                    raise ValueError(f"poison item {item}")
            return len(payload)
"""


def _project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "handler.py").write_text(textwrap.dedent(HANDLER))
    spec = "name: isolation-bench\nkind: BatchAPI\nhandler:\n  type: python\n  path: handler.py\n"
    (root / "batchapi.yaml").write_text(spec)
    return root


def _poison_items() -> list[int]:
    batches = random.Random(16).sample(range(ITEMS // BATCH), POISON)
    rng = random.Random(61)
    return sorted(b * BATCH + rng.randrange(BATCH) for b in batches)


def _submission(isolate: bool, poison: list[int]) -> dict:
    return {
        "workers": 2,
        "item_list": {"items": list(range(ITEMS)), "batch_size": BATCH},
        "dead_letter": {"max_receive_count": 1, "isolate_items": isolate},
        "config": {"poison": poison},
    }


def _run(api, submission: dict, calls: Path) -> tuple[float, dict, int]:
    calls.unlink(missing_ok=True)
    submission = {**submission, "config": {**submission["config"], "calls": str(calls)}}
    start = time.perf_counter()
    job = api.submit(submission)
    job.wait(timeout=600)
    seconds = time.perf_counter() - start
    return seconds, job.status["job_status"], len(calls.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    poison = _poison_items()
    variants = {
        "clean": _submission(False, []),
        "isolate, clean": _submission(True, []),
        "isolate, 0.1% poison": _submission(True, poison),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    calls: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
            with Client(cluster) as client:
                bc = batchapi.client(store=str(Path(tmp) / "store"), cluster=client)
                api = bc.deploy(_project(Path(tmp) / "project"))
                counter = Path(tmp) / "calls"
                _run(api, variants["clean"], counter)  # warm the workers
                for _ in range(args.repeats):
                    for name, submission in variants.items():  # interleaved: fair under load
                        seconds, status, calls[name] = _run(api, submission, counter)
                        times[name].append(seconds)
                        _check(name, status)
    _print(times, calls, args.repeats)
    return 0


def _check(name: str, status: dict) -> None:
    expected = POISON if "poison" in name else 0
    if status["items_dead_lettered"] != expected:
        raise SystemExit(f"{name}: {status['items_dead_lettered']} items dead-lettered")


def _print(times: dict, calls: dict, repeats: int) -> None:
    base = statistics.median(times["clean"])
    print(f"| variant | job wall time, median [min–max] (n={repeats}) | ratio | handler calls |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        span = f"{median:.2f} s [{min(values):.2f}–{max(values):.2f}]"
        print(f"| {name} | {span} | {median / base:.2f}x | {calls[name]} |")
    extra = (calls["isolate, 0.1% poison"] - calls["clean"]) / POISON
    bound = 2 * math.log2(BATCH)
    print(f"\nextra handler calls per poison item: {extra:.1f} (2*log2({BATCH}) = {bound:.1f})")


if __name__ == "__main__":
    sys.exit(main())
