"""Load: 10 jobs submitted at once through the CLI, each 5,000 batches of 20 items.

    .venv/bin/python benchmarks/load.py [--workers 10] [--jobs 10] [--batches 5000]
        [--cluster local|existing] [--existing-workers 4] [--latency 5] [--repeats 1]

Cortex's load shape: every job is a separate ``dask-batchapi submit API FILE`` process, all
started at the same moment; the handler is a no-op. On ``--cluster local`` (the default) the
jobs go to the machine's one local runner and its shared embedded ``LocalCluster`` of
``batchapi.local.max-workers`` workers (worker leases give each job its own workers and queue
the rest); ``--cluster existing`` starts a ``LocalCluster`` of ``--existing-workers`` workers in
this script and submits with ``--cluster <its address>``. The script
waits for every job's final status and asserts ``succeeded`` with exact metrics
(``succeeded == batches``, ``failed == 0``, ``dead_lettered == 0``,
``total_batch_count == batches``). It reports the wall time from the first submit to the last
final status, per-job durations and the machine's peak memory (psutil), prints the tables and
writes them into ``benchmarks/reliability-results.md`` (its "Load" section, replaced on a rerun).

Cortex's own end-to-end budget for this load was 210 s on a real cluster.

It also samples the worker processes of the machine's clusters (processes running a
multiprocessing ``spawn_main`` under a runner or this script): their peak must never pass
``max-workers`` on the embedded cluster.

``--latency N``: N times, a 1-batch job submitted (``client.submit``, Python) to the idle,
running local cluster; the time from the call to the handler's first batch starting (the
handler writes ``time.time()``; one machine, one clock).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "reliability-results.md"
LOAD_MARKER = "\n## Load"
CLI = str(Path(sys.executable).with_name("dask-batchapi"))
CORTEX_BUDGET_S = 210

sys.path.insert(0, str(HERE))
from reliability import machine, markdown_table, wait_for_runners  # noqa: E402

import dask_batchapi as batchapi  # noqa: E402
from dask_batchapi import config as batchapi_config  # noqa: E402
from dask_batchapi.status import JobState, JobStatus, is_interrupted, parse_iso  # noqa: E402
from dask_batchapi.store.jobstore import JobStore  # noqa: E402

NOOP_HANDLER = """
    import time

    class Handler:
        def __init__(self, config):
            self.stamp = config.get("stamp")
        def handle_batch(self, payload):
            if self.stamp:
                with open(self.stamp, "a") as f:
                    f.write(f"{time.time()}\\n")
    """
SPEC = """
    - name: load-noop
      kind: BatchAPI
      handler:
        type: python
        path: handler.py
    """


class MemorySampler(threading.Thread):
    """Samples the machine's used memory (total - available) and the jobs' processes' RSS."""

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True, name="memory-sampler")
        self.interval = interval
        self.baseline = self._used()
        self.peak = self.baseline
        self.peak_jobs_rss = 0
        self.peak_processes = 0
        self.peak_workers = 0  # worker processes of the clusters (multiprocessing spawn_main)
        self.driver_pids: set[int] = set()
        self._halt = threading.Event()
        self._last_tree = 0.0

    @staticmethod
    def _used() -> int:
        vm = psutil.virtual_memory()
        return vm.total - vm.available

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.peak = max(self.peak, self._used())
            if time.monotonic() - self._last_tree >= 0.5:  # process trees cost more: 2 Hz
                self._last_tree = time.monotonic()
                rss, count = self._jobs_rss()
                self.peak_jobs_rss = max(self.peak_jobs_rss, rss)
                self.peak_processes = max(self.peak_processes, count)
                self.peak_workers = max(self.peak_workers, _worker_processes())

    def _jobs_rss(self) -> tuple[int, int]:
        rss = count = 0
        for pid in list(self.driver_pids):
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                try:
                    rss += proc.memory_info().rss
                    count += 1
                except psutil.NoSuchProcess:
                    pass
        return rss, count

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _worker_processes() -> int:
    """Dask worker processes on this machine under a runner of ours or this script."""
    count = 0
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "spawn_main" not in cmdline:
            continue
        try:
            parent = " ".join(psutil.Process(proc.info["ppid"]).cmdline())
        except psutil.Error:
            continue
        if "dask_batchapi.driver" in parent or proc.info["ppid"] == os.getpid():
            count += 1
    return count


@dataclass
class JobResult:
    job_id: str
    submit_s: float  # CLI process start -> exit
    doc: dict = field(default_factory=dict)
    seen_final: float = 0.0  # wall clock when this script saw the final status
    created_time: str | None = None
    # when a reader would have been told "interrupted" (the driver is alive: a false alarm)
    interrupted_first: float | None = None
    interrupted_last: float | None = None

    @property
    def false_interrupted_s(self) -> float | None:
        if self.interrupted_first is None:
            return None
        return self.interrupted_last - self.interrupted_first

    @property
    def created(self) -> float:
        return parse_iso(self.doc["created_time"])

    @property
    def start(self) -> float:
        return parse_iso(self.doc["start_time"])

    @property
    def end(self) -> float:
        return parse_iso(self.doc["end_time"])


@dataclass
class Run:
    workers: int
    jobs: list[JobResult]
    first_submit: float
    wall: float
    memory: MemorySampler
    problems: list[str]


def run_load(
    root: Path, workers: int, n_jobs: int, batches: int, batch_size: int, cluster: str = "local"
) -> Run:
    store_dir = root / f"store-w{workers}-{time.time_ns()}"
    env = {
        "DASK_BATCHAPI_CLUSTER": cluster,
        **os.environ,
        "DASK_BATCHAPI_STORE": str(store_dir),
        "DASK_TEMPORARY_DIRECTORY": str(root / "dask-tmp"),
    }
    project = root / "load-noop"
    if not project.exists():
        project.mkdir(parents=True)
        (project / "handler.py").write_text(textwrap.dedent(NOOP_HANDLER))
        (project / "batchapi.yaml").write_text(textwrap.dedent(SPEC))
    client = batchapi.client(store=str(store_dir), cluster=cluster)
    client.deploy(project)
    store = JobStore(str(store_dir))
    submission = root / f"submission-w{workers}.json"
    items = list(range(batches * batch_size))
    submission.write_text(
        json.dumps({"workers": workers, "item_list": {"items": items, "batch_size": batch_size}})
    )

    memory = MemorySampler()
    memory.start()
    first_submit = time.time()
    procs = [
        (
            time.time(),
            subprocess.Popen(  # noqa: S603 - our own CLI
                [CLI, "submit", "load-noop", str(submission)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for _ in range(n_jobs)
    ]
    results: list[JobResult] = []
    problems: list[str] = []
    for started, proc in procs:
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0 or not out.strip():
            problems.append(f"submit exited {proc.returncode}: {err.strip()[-300:]}")
            continue
        results.append(JobResult(out.split()[0], time.time() - started))
    pending = {r.job_id: r for r in results}
    heartbeat_timeout = float(batchapi_config.get("heartbeat-timeout"))
    deadline = time.time() + 600
    while pending and time.time() < deadline:
        for job_id, result in list(pending.items()):
            state = store.read_state("load-noop", job_id) or {}
            pid = (state.get("driver") or {}).get("pid")
            if pid:
                memory.driver_pids.add(pid)
            if state.get("status") and JobStatus(state["status"]).is_terminal:
                result.seen_final = time.time()
                del pending[job_id]
                continue
            # what `get` / `Job.wait()` would say right now (the status document's rule)
            if result.created_time is None:
                result.created_time = store.get_job("load-noop", job_id).created_time
            now = time.time()
            record = {"created_time": result.created_time}
            if is_interrupted(record, JobState.from_dict(state), now, heartbeat_timeout):
                result.interrupted_first = result.interrupted_first or now
                result.interrupted_last = now
        time.sleep(0.25)
    memory.stop()
    for job_id in pending:
        problems.append(f"job {job_id} not final after 600 s")
    for result in results:
        result.doc = client.get_job("load-noop", result.job_id).status["job_status"]
        problems += check_exact(result, batches)
        if result.doc.get("run") != 1:
            problems.append(f"job {result.job_id}: run {result.doc.get('run')}, expected 1")
    ends = [r.end for r in results if r.doc.get("end_time")]
    wall = (max(ends) - first_submit) if ends else float("nan")
    return Run(workers, results, first_submit, wall, memory, problems)


def check_exact(result: JobResult, batches: int) -> list[str]:
    doc, m = result.doc, result.doc["batch_metrics"]
    wanted = {
        "status": (doc["status"], "succeeded"),
        "succeeded": (m["succeeded"], batches),
        "failed": (m["failed"], 0),
        "dead_lettered": (m["dead_lettered"], 0),
        "total_batch_count": (doc["total_batch_count"], batches),
    }
    return [
        f"job {result.job_id}: {key} = {got!r}, expected {want!r}"
        for key, (got, want) in wanted.items()
        if got != want
    ]


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def summary_table(runs: list[Run], batches: int, batch_size: int) -> str:
    rows = []
    for run in runs:
        jobs = [j for j in run.jobs if j.doc.get("end_time")]
        durations = [j.end - j.created for j in jobs]
        m = run.memory
        ok = not run.problems
        rows.append(
            [
                str(run.workers),
                f"{len(run.jobs)} x {batches:,} batches x {batch_size} items",
                f"{run.wall:.1f} s",
                f"{statistics.median(durations):.1f} s" if durations else "-",
                f"{min(durations):.1f}–{max(durations):.1f} s" if durations else "-",
                f"{sum(j.doc['batch_metrics']['lost'] for j in jobs)}",
                f"{gib(m.peak)} (+{gib(m.peak - m.baseline)} over {gib(m.baseline)} at start)",
                f"{gib(m.peak_jobs_rss)} in {m.peak_processes} processes",
                str(m.peak_workers),
                f"{batches * len(jobs) / run.wall:,.0f} batches/s",
                _false_alarms(run.jobs),
                "all succeeded, exact metrics" if ok else "FAIL: " + "; ".join(run.problems)[:300],
                f"{run.wall / CORTEX_BUDGET_S:.2f}x Cortex's 210 s",
            ]
        )
    headers = [
        "workers per job",
        "load",
        "wall: first submit -> last final status",
        "per-job duration (created -> final), median",
        "per-job min–max",
        "lost",
        "peak machine memory used",
        "peak RSS of the jobs' processes",
        "peak worker processes",
        "throughput",
        "jobs shown `interrupted` while alive",
        "check",
        "vs budget",
    ]
    return markdown_table(headers, rows)


def _false_alarms(jobs: list[JobResult]) -> str:
    alarms = [j.false_interrupted_s for j in jobs if j.false_interrupted_s is not None]
    if not alarms:
        return "0"
    return f"{len(alarms)} of {len(jobs)} (for up to {max(alarms):.1f} s)"


def jobs_table(run: Run) -> str:
    rows = []
    for i, j in enumerate(sorted(run.jobs, key=lambda j: j.doc.get("created_time", "")), 1):
        d = j.doc
        if not d.get("end_time"):
            rows.append([str(i), j.job_id, d.get("status", "?")] + ["-"] * 7)
            continue
        m = d["batch_metrics"]
        rows.append(
            [
                str(i),
                j.job_id,
                d["status"],
                f"{m['succeeded']}/{d['total_batch_count']} (failed {m['failed']}, "
                f"dead-lettered {m['dead_lettered']}, lost {m['lost']})",
                f"{j.submit_s:.1f} s",
                f"{j.start - j.created:.1f} s",
                f"{j.end - j.start:.1f} s",
                f"{j.end - j.created:.1f} s",
                f"{j.end - run.first_submit:.1f} s",
                "-" if j.false_interrupted_s is None else f"{j.false_interrupted_s:.1f} s",
            ]
        )
    headers = [
        "#",
        "job id",
        "status",
        "succeeded/total",
        "`submit` CLI",
        "job created -> running (driver + cluster start)",
        "running -> final",
        "created -> final",
        "first submit -> this final",
        "shown `interrupted` while alive",
    ]
    return markdown_table(headers, rows)


def write_section(text: str) -> None:
    title = "# dask-batchapi — reliability results\n"
    current = RESULTS.read_text() if RESULTS.exists() else title
    if LOAD_MARKER in current:
        current = current[: current.index(LOAD_MARKER)]
    RESULTS.write_text(current.rstrip("\n") + "\n" + text)


def latency(root: Path, repeats: int) -> list[float]:
    """Seconds from ``client.submit`` to the first batch running, on an idle running local
    cluster (a first job brings the local runner up)."""
    store_dir = root / "store-latency"
    project = root / "load-noop"
    client = batchapi.client(store=str(store_dir), cluster="local")
    api = client.deploy(project)
    api.submit({"item_list": {"items": [1], "batch_size": 1}}).wait(timeout=120)
    seconds = []
    for i in range(repeats):
        stamp = root / f"stamp-{i}"
        time.sleep(1.0)  # idle
        started = time.time()
        sub = {"item_list": {"items": [1], "batch_size": 1}, "config": {"stamp": str(stamp)}}
        job = api.submit(sub)
        job.wait(timeout=60)
        seconds.append(float(stamp.read_text().split()[0]) - started)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="10", help="workers per job, e.g. 10 or 1,2")
    parser.add_argument("--cluster", choices=["local", "existing"], default="local")
    parser.add_argument("--existing-workers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--latency", type=int, default=0, help="latency probes (0: none)")
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--batches", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    header = machine()
    root = Path(tempfile.mkdtemp(prefix="batchapi-load-"))
    runs: list[Run] = []
    existing = None
    lat: list[float] = []
    try:
        if args.cluster == "existing":
            from distributed import LocalCluster

            existing = LocalCluster(
                n_workers=args.existing_workers, threads_per_worker=1, dashboard_address=":0"
            )
        target = existing.scheduler_address if existing is not None else "local"
        for workers in counts:
            for _ in range(args.repeats):
                print(f"workers={workers}: submitting {args.jobs} jobs ...", flush=True)
                run = run_load(root, workers, args.jobs, args.batches, args.batch_size, target)
                runs.append(run)
                print(
                    f"  wall {run.wall:.1f} s; peak worker processes {run.memory.peak_workers}; "
                    f"problems: {run.problems or 'none'}",
                    flush=True,
                )
                time.sleep(3)
        if args.latency:
            lat = latency(root, args.latency)
            print(f"latency submit -> first batch: {[round(x, 3) for x in lat]}", flush=True)
    finally:
        if existing is not None:
            existing.close()
        wait_for_runners(root)
        shutil.rmtree(root, ignore_errors=True)
    summary = summary_table(runs, args.batches, args.batch_size)
    per_job = "\n\n".join(f"workers = {r.workers}:\n\n{jobs_table(r)}" for r in runs)
    print()
    print(summary)
    print()
    print(per_job)
    command = " ".join(["benchmarks/load.py", *sys.argv[1:]])
    section = "\n".join(
        [
            "",
            "## Load: 10 jobs submitted at once",
            "",
            f"Command: `.venv/bin/python {command}`. Produced by `benchmarks/load.py`.",
            "",
            *header,
            "",
            f"Each job: `dask-batchapi submit` (driven by the one local runner, on its embedded LocalCluster), "
            f"{args.batches:,} batches of {args.batch_size} items, a no-op handler; all "
            f"{args.jobs} CLI processes started at once. Wall time runs from the first `submit` "
            "to the last job's `end_time`. Cortex's own end-to-end budget for this load: "
            f"{CORTEX_BUDGET_S} s on a real cluster.",
            "",
            summary,
            "",
            "Per job:",
            "",
            per_job,
            "",
        ]
    )
    if not args.no_write:
        write_section(section)
        print(f"written: {RESULTS.relative_to(ROOT)}")
    return 0 if all(not r.problems for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
