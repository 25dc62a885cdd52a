"""Shared helpers for the benchmarks: the cluster, handler projects, timing stats, machine info.

Every benchmark module exposes ``run(client, opts) -> list[Row]`` (or spawns its own
processes where it must measure a fresh process) and is driven by ``run.py``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKERS = 2  # worker processes of the benchmark cluster, one thread each


# -- statistics --------------------------------------------------------------------------------
@dataclass
class Stat:
    """Median, min and max of repeated measurements of one quantity."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def fmt(self, spec: str = ".3g", unit: str = "") -> str:
        if not self.values:
            return "n/a"
        u = f" {unit}" if unit else ""
        if len(self.values) == 1:
            return f"{self.median:{spec}}{u} (n=1)"
        return (
            f"{self.median:{spec}}{u} [{self.min:{spec}}–{self.max:{spec}}] (n={len(self.values)})"
        )


@dataclass
class Row:
    """One line of the results table."""

    bench: str  # "a", "b", ...
    case: str  # what was measured
    system: str  # dask-batchapi, raw Dask, ProcessPool, ...
    metric: str  # batches/s, efficiency, MB, s
    stat: Stat
    spec: str = ".3g"
    ratio: str = ""  # vs baseline, pre-formatted
    target: str = ""  # the target, pre-formatted
    verdict: str = ""  # met / short / info
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        return [
            self.bench,
            self.case,
            self.system,
            f"{self.metric}: {self.stat.fmt(self.spec)}",
            self.ratio,
            self.target,
            self.verdict,
        ]


HEADER = ["bench", "case", "system", "median [min–max] (n)", "ratio", "target", "verdict"]


def verdict(ok: bool) -> str:
    return "met" if ok else "SHORT"


def format_table(rows: list[Row]) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""
    lines = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [fmt(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(r.cells()) for r in rows]
    return "\n".join(out)


# -- the machine -------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    import dask
    import distributed
    import psutil

    import dask_batchapi

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "CPU": cpu,
        "cores": f"{os.cpu_count()} logical, {psutil.cpu_count(logical=False)} physical",
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "OS": platform.platform(),
        "Python": sys.version.split()[0],
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "dask-batchapi": getattr(dask_batchapi, "__version__", "?"),
        "Ray Data (benchmarks/.env-ray)": _ray_version(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "package sources at start": package_state(),
    }


def _ray_version() -> str:
    """Ray's version in the benchmark's own Ray environment, without importing it here."""
    found = sorted(HERE.glob(".env-ray/lib/python*/site-packages/ray-*.dist-info"))
    if not found:
        return "not installed (bash benchmarks/ray_env.sh)"
    return found[-1].name.removeprefix("ray-").removesuffix(".dist-info")


def package_state() -> str:
    """A short hash of the package's sources and their newest modification time.

    Others edit the package while benchmarks run; comparing this at the start and the end of
    a run says whether all of its numbers measured the same code.
    """
    import hashlib

    import dask_batchapi

    files = sorted(Path(dask_batchapi.__file__).parent.glob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    newest = max(path.stat().st_mtime for path in files)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(newest))
    return f"sha256 {digest.hexdigest()[:12]} (newest file {stamp} UTC)"


def loadavg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# -- background load ---------------------------------------------------------------------------
class CpuMeter:
    """Share of the machine's CPU that processes outside this process tree used meanwhile.

    The benchmark cluster's workers and the process pool are children of this process, so
    whatever else is busy (another test suite on a shared machine) shows up here. A high share
    means the run is slower than the code: read its numbers with that in mind.
    """

    def __enter__(self) -> CpuMeter:
        self._start = (time.perf_counter(), _machine_busy(), _tree_cpu())
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, ours0 = self._start
        wall = time.perf_counter() - wall0
        busy, ours = _machine_busy() - busy0, _tree_cpu() - ours0
        self.foreign = max(0.0, busy - ours) / (wall * (os.cpu_count() or 1))


def _machine_busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return (
        t.user
        + t.system
        + getattr(t, "nice", 0)
        + getattr(t, "irq", 0)
        + getattr(t, "softirq", 0)
        + getattr(t, "steal", 0)
    )


def _tree_cpu() -> float:
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


# -- processes and memory ----------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    ``VmHWM`` of /proc/self/status where there is one: ``ru_maxrss`` survives ``exec``, so a
    child forked from a big parent (this benchmark process) would report the parent's RSS.
    """
    own = vm_hwm_mb(os.getpid())
    if own is not None:
        return own
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def vm_hwm_mb(pid: int) -> float | None:
    """Peak RSS (VmHWM) of another live process, from /proc; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def bench_env(store: Path | None = None) -> dict[str, str]:
    """Environment for child processes: the venv's scripts first, an optional store."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if store is not None:
        env["DASK_BATCHAPI_STORE"] = str(store)
    env.setdefault("PYTHONWARNINGS", "ignore")
    # a runner exits with its job unless a benchmark measures the warm one (bench_latency)
    env.setdefault("DASK_BATCHAPI__KEEP_ALIVE", "0")
    return env


# -- handler projects --------------------------------------------------------------------------
NOOP_HANDLER = """
class Handler:
    def handle_batch(self, payload):
        pass
"""

# CPU work: spin until this thread has used `seconds` of CPU (not wall) time, so time stolen
# by other processes (the scheduler, the driver) shows up as lost efficiency.
BUSY_HANDLER = """
import time

class Handler:
    def __init__(self, config):
        self.seconds = float(config.get("seconds", 0.05))

    def handle_batch(self, payload):
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass
"""

# Latency probes: the time of this worker's first handle_batch call, and the end time of its
# latest batch, written to files named after the process (one set per worker).
PROBE_HANDLER = """
import os, time

class Handler:
    def __init__(self, config):
        self.dir = config["probe_dir"]
        self.first = True

    def handle_batch(self, payload):
        now = time.time()
        if self.first:
            self.first = False
            _write(os.path.join(self.dir, f"first-{os.getpid()}"), now)
        _write(os.path.join(self.dir, f"last-{os.getpid()}"), time.time())


def _write(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(repr(value))
    os.replace(tmp, path)
"""


def write_project(root: Path, name: str, handler: str) -> Path:
    """A minimal project directory: ``handler.py`` and ``batchapi.yaml``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.py").write_text(textwrap.dedent(handler).lstrip())
    (root / "batchapi.yaml").write_text(
        f"name: {name}\nkind: BatchAPI\nhandler:\n  type: python\n  path: handler.py\n"
    )
    return root


@contextlib.contextmanager
def workdir(prefix: str = "batchapi-bench-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


# -- the cluster -------------------------------------------------------------------------------
@contextlib.contextmanager
def local_client(workers: int = WORKERS) -> Iterator:
    """A LocalCluster of ``workers`` processes with one thread each, and its Client."""
    import logging

    import dask.config
    from distributed import Client, LocalCluster

    # shutdown chatter of the cluster is not benchmark output
    logging.getLogger("distributed").setLevel(logging.ERROR)
    # the workers of dask-batchapi's embedded cluster (batchapi.worker-profile: false): Dask's
    # profiler off, for every system measured on this cluster (raw Dask included)
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(workers)
        yield client
    finally:
        client.close()
        cluster.close()


def settle(client, timeout: float = 30.0) -> None:
    """Wait until the scheduler holds no tasks, so one measurement does not leak into the next."""
    gc.collect()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.run_on_scheduler(_scheduler_task_count) == 0:
            break
        time.sleep(0.05)
    time.sleep(0.2)


def _scheduler_task_count(dask_scheduler=None) -> int:
    return len(dask_scheduler.tasks)


def run_job_in_process(api, submission: dict) -> tuple[float, object]:
    """Submit a job whose driver runs on a thread of this process; (seconds, job).

    The clock runs from just before ``submit`` to the moment the driver thread returns,
    which is right after it wrote the final status to the store. Joining the thread instead of
    polling ``job.wait()`` keeps a polling loop from competing with the driver for the GIL.
    """
    start = time.perf_counter()
    job = api.submit(submission)
    driver = getattr(job, "_driver", None)
    if isinstance(driver, threading.Thread):
        driver.join()
    else:  # the package changed how it hosts the driver: fall back to the public API
        job.wait(poll=0.01)
    return time.perf_counter() - start, job


def task_busy_share(task_stream: list[dict], prefix: str, workers: int, wall: float) -> float:
    """Share of the workers' time spent inside tasks whose key starts with ``prefix``."""
    busy = 0.0
    for record in task_stream:
        if str(record.get("key", "")).startswith(prefix):
            for part in record.get("startstops", ()):
                if part.get("action") == "compute":
                    busy += part["stop"] - part["start"]
    return busy / (workers * wall)


def job_final_status(job) -> str:
    return job.status["job_status"]["status"]


def repeat(n: int, fn: Callable[[int], None]) -> None:
    for i in range(n):
        fn(i)
