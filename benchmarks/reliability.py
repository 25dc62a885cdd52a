"""Reliability suite: inject real faults into real jobs and count what happened to every batch.

    .venv/bin/python benchmarks/reliability.py [--only a,b,...] [--keep]

Each fault runs one job (detached driver, embedded ``LocalCluster`` unless said otherwise) whose
handler appends one marker line per handler call (batch id, pid, time, outcome, network
namespace) to a file; every job has an ``output`` location, so committed parts can be counted.
A row is checked against what the fault should produce:

* every batch is accounted for: ``never processed`` is 0 unless the fault ends the job early
  by design (OOM, init error, timeout, stop) — those rows say how many and why;
* output parts are exactly the batches the ledger calls succeeded, each holding its own batch.

Faults: (a) SIGKILL a worker three times in one job; (b) SIGKILL the driver's host process, then
``dask-batchapi resume --wait``; (c) scheduler and two workers in separate network namespaces,
one worker's link cut mid-job; (d) a handler failing on chosen items; (e) a handler exhausting
its memory limit; (f) ``Handler.__init__`` raising; (g) the job's timeout; (h) ``stop``;
(i) the store's disk full mid-job (a 20 MB tmpfs; needs root), then ``resume``; (j) two
concurrent ``resume_job`` calls with a warm runner up; (k) one job's ``state.json`` truncated.

The table goes to stdout and to ``benchmarks/reliability-results.md`` (the load section that
``benchmarks/load.py`` appends there is kept). Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "reliability-results.md"
LOAD_MARKER = "\n## Load"  # load.py's section of the results file starts here
sys.path.insert(0, str(ROOT / "tests"))  # netns.py: the network-namespace helper of the tests

import dask_batchapi as batchapi  # noqa: E402
from dask_batchapi import config as batchapi_config  # noqa: E402
from dask_batchapi.status import JobStatus, parse_iso  # noqa: E402

PYTHON = sys.executable
CHECKPOINT_INTERVAL = float(batchapi_config.get("checkpoint-interval"))

# One handler for every fault; the job's config chooses what goes wrong.
HANDLER = """
    import json, os, time

    class Handler:
        def __init__(self, config, job_spec):
            if config.get("init_error"):
                raise RuntimeError("model weights not found (injected init failure)")
            self.marks = os.path.join(config["marks"], "calls")
            self.sleep = float(config.get("sleep", 0))
            self.fail = set(config.get("fail_items", ()))
            self.complete = os.path.join(config["marks"], "complete")

        def handle_batch(self, payload, batch_id):
            if "hog" in payload:
                hog = b"x" * (700 * 2**20)  # past compute.mem (400Mi): the nanny kills us
                time.sleep(5)
                del hog
            time.sleep(self.sleep)
            bad = [x for x in payload if x in self.fail]
            mark = {"batch_id": batch_id, "pid": os.getpid(), "time": time.time(),
                    "ok": not bad, "netns": os.readlink("/proc/self/ns/net")}
            with open(self.marks, "a") as f:  # one short line: an atomic O_APPEND write
                f.write(json.dumps(mark) + "\\n")
            if bad:
                raise ValueError(f"cannot handle items {bad} (injected handler failure)")
            return payload

        def on_job_complete(self):
            with open(self.complete, "a") as f:
                f.write("done\\n")
    """

SPEC = """
    - name: {name}
      kind: BatchAPI
      handler:
        type: python
        path: handler.py
    {compute}
    """


# -- results ------------------------------------------------------------------------------------
@dataclass
class Row:
    fault: str
    size: str
    status: str = "-"
    succeeded: int | str = "-"
    dead_lettered: int | str = "-"
    lost: int | str = "-"
    processed: int | str = "-"
    never: str = "-"
    parts: str = "-"
    wall: str = "-"
    detail: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # real defects outside the fault's contract

    @property
    def verdict(self) -> str:
        verdict = "pass" if not self.problems else "FAIL: " + "; ".join(self.problems)
        return verdict + "".join(f"; WARNING: {w}" for w in self.warnings)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


HEADERS = [
    "fault injected",
    "job size",
    "final status",
    "batches succeeded",
    "dead-lettered",
    "lost (reruns counted by the framework)",
    "processed at least once",
    "never processed",
    "output parts (exactly once)",
    "wall time",
    "measured",
    "verdict",
]


def table(rows: list[Row]) -> str:
    cells = [
        [
            r.fault,
            r.size,
            r.status,
            str(r.succeeded),
            str(r.dead_lettered),
            str(r.lost),
            str(r.processed),
            r.never,
            r.parts,
            r.wall,
            r.detail,
            r.verdict,
        ]
        for r in rows
    ]
    return markdown_table(HEADERS, cells)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> list[str]:
    mem = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import dask
    import distributed

    return [
        f"- date (UTC): {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}",
        f"- CPU: {cpu}, {psutil.cpu_count()} logical cores "
        f"({psutil.cpu_count(logical=False)} physical)",
        f"- RAM: {mem:.1f} GiB",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}, dask {dask.__version__}, "
        f"distributed {distributed.__version__}",
        "- load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]


# -- the lab: a store, projects, jobs, markers ---------------------------------------------------
class Lab:
    """A scratch store and output root for the suite; env exported for CLI subprocesses."""

    def __init__(self, root: Path):
        self.root = root
        self.store = root / "store"
        os.environ["DASK_BATCHAPI_STORE"] = str(self.store)
        os.environ["DASK_TEMPORARY_DIRECTORY"] = str(root / "dask-tmp")  # worker scratch dirs
        self.client = batchapi.client(store=str(self.store))
        self.apis = {
            "marking": self._deploy("rel-marking", ""),
            "hog": self._deploy("rel-hog", "  compute: {mem: 400Mi}"),
        }

    def _deploy(self, name: str, compute: str) -> batchapi.BatchAPI:
        project = self.root / "projects" / name
        project.mkdir(parents=True)
        (project / "handler.py").write_text(textwrap.dedent(HANDLER))
        spec = textwrap.dedent(SPEC).format(name=name, compute=compute)
        (project / "batchapi.yaml").write_text(spec)
        return self.client.deploy(project)

    def fresh(self, label: str) -> tuple[Path, Path]:
        """(marks dir, output dir) for one fault."""
        marks, out = self.root / label / "marks", self.root / label / "out"
        marks.mkdir(parents=True)
        return marks, out

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PYTHON, "-m", "dask_batchapi.api.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def marks_of(marks: Path) -> list[dict]:
    path = marks / "calls"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate: Callable, timeout: float, what: str, step: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_final(job: batchapi.Job, timeout: float, row: Row | None = None) -> tuple[dict, float]:
    """(final job_status, wall-clock time it was first seen).

    Keeps waiting through ``interrupted`` when the driver's process is in fact alive (a false
    alarm, recorded as a warning on ``row``); raises if the driver is really gone, or on timeout.
    """
    deadline = time.time() + timeout
    false_alarm: float | None = None
    while True:
        doc = job.status["job_status"]
        if JobStatus(doc["status"]).is_terminal:
            break
        if doc["interrupted"]:
            state = job.client.store.read_state(job.api_name, job.job_id) or {}
            pid = (state.get("driver") or {}).get("pid")
            if not pid or not psutil.pid_exists(pid):
                raise RuntimeError(f"job {job.job_id} interrupted: its driver died")
            false_alarm = false_alarm or time.time()
        if time.time() > deadline:
            raise TimeoutError(f"job {job.job_id} still {doc['status']} after {timeout:.0f} s")
        time.sleep(0.05)
    seen = time.time()
    if false_alarm is not None and row is not None:
        row.warnings.append(
            f"status said `interrupted` (Job.wait() raises) for {seen - false_alarm:.1f} s while "
            f"the driver was alive and starting (driver running "
            f"{parse_iso(doc['start_time']) - parse_iso(doc['created_time']):.1f} s after submit)"
        )
    return doc, seen


def wait_terminal(job: batchapi.Job, timeout: float) -> tuple[dict, float]:
    """Like :func:`wait_final`, but keeps waiting through an (apparent) interruption."""
    deadline = time.time() + timeout
    while True:
        doc = job.status["job_status"]
        if JobStatus(doc["status"]).is_terminal or time.time() > deadline:
            return doc, time.time()
        time.sleep(0.05)


def ledger_succeeded(lab: Lab, api: str, job_id: str) -> set[int]:
    from dask_batchapi.driver.ledger import load_final

    return load_final(lab.client.store, api, job_id).succeeded


def account(
    row: Row,
    lab: Lab,
    job: batchapi.Job,
    doc: dict,
    marks: Path,
    out: Path,
    total: int,
    items: list,
    batch_size: int,
    never_expected: int | None = 0,
    why_never: str = "",
) -> list[dict]:
    """Fill the common columns of ``row`` and check the nothing-lost / exactly-once contract."""
    metrics = doc["batch_metrics"]
    row.status = doc["status"]
    row.succeeded, row.dead_lettered, row.lost = (
        metrics["succeeded"],
        metrics["dead_lettered"],
        metrics["lost"],
    )
    calls = marks_of(marks)
    processed = {c["batch_id"] for c in calls}
    row.processed = len(processed)
    never = total - len(processed)
    if never_expected is None:  # the job ends early by design: any count is expected
        row.never = f"{never} (by design: {why_never})"
    elif never_expected:
        row.never = f"{never} (by design: {why_never})"
        row.check(never == never_expected, f"{never} never processed, expected {never_expected}")
    else:
        row.never = str(never)
        row.check(never == 0, f"{never} batches never processed")
    # exactly-once outputs: the committed parts are the ledger's successes, each its own batch
    done = ledger_succeeded(lab, job.api_name, job.job_id)
    part_dir = out / job.job_id
    parts = sorted(part_dir.iterdir()) if part_dir.exists() else []
    by_index = {int(p.name.split("-")[1].split(".")[0]): p for p in parts}
    indices = set(by_index)
    wrong = [
        i
        for i, p in by_index.items()
        if [json.loads(x) for x in p.read_text().splitlines()]
        != items[i * batch_size : (i + 1) * batch_size]
    ]
    # A job ended by stop/timeout: batches in flight at that moment may still finish on their
    # worker and commit their part, yet never reach the ledger. Shown apart, not hidden.
    end = parse_iso(doc.get("end_time")) or time.time()
    late_ok = {
        int(c["batch_id"].rsplit("-", 1)[1]) for c in calls if c["ok"] and c["time"] >= end - 0.5
    }
    extra = indices - done
    early = doc["status"] in ("stopped", "timed_out")
    once = (
        done <= indices
        and (not extra or (early and extra <= late_ok))
        and not wrong
        and len(done) == metrics["succeeded"]
    )
    if once and extra:
        row.parts = (
            f"{len(parts)} (== {len(done)} ledger successes + {len(extra)} in flight at the "
            f"end, finished on the worker but not counted)"
        )
    else:
        row.parts = f"{len(parts)} ({'== ledger successes' if once else 'MISMATCH'})"
    row.check(
        once,
        f"parts {len(parts)} vs ledger {len(done)} vs metrics {metrics['succeeded']}, "
        f"wrong content {len(wrong)}",
    )
    row.check(
        metrics["succeeded"] + metrics["dead_lettered"] <= total, "more final batches than batches"
    )
    return calls


def lab_submission(
    items: list,
    marks: Path,
    out: Path,
    *,
    workers: int = 2,
    batch_size: int = 1,
    extra: dict | None = None,
    **config,
) -> dict:
    """A submission for the lab's handlers: markers in ``marks``, outputs in ``out``,
    ``config`` for the handler (sleep, fail_items, init_error), ``extra`` top-level keys."""
    return {
        "workers": workers,
        "item_list": {"items": items, "batch_size": batch_size},
        "config": {"marks": str(marks), **config},
        "output": str(out),
        **(extra or {}),
    }


def submit(api: batchapi.BatchAPI, submission: dict) -> tuple[batchapi.Job, float]:
    t0 = time.time()
    return api.submit(submission), t0


# -- (a) SIGKILL a worker three times --------------------------------------------------------
def fault_worker_kills(lab: Lab) -> Row:
    total = 150
    row = Row(
        "(a) SIGKILL a worker process mid-job, 3 times",
        f"{total} batches x 1 item, 2 workers, 50 ms each",
    )
    marks, out = lab.fresh("a")
    items = list(range(total))
    job, t0 = submit(
        lab.apis["marking"],
        lab_submission(items, marks, out, sleep=0.05),
    )
    killed: list[int] = []
    for round_ in range(3):

        def victim(round_: int = round_) -> int | None:
            calls = marks_of(marks)
            pids = [c["pid"] for c in calls[-4:] if c["pid"] not in killed]
            pids = [p for p in pids if psutil.pid_exists(p)]
            return pids[-1] if len(calls) >= 25 * (round_ + 1) and pids else None

        pid = wait_for(victim, 60, f"a live worker to kill (round {round_ + 1})")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    doc, t_end = wait_final(job, 120, row)
    row.wall = f"{t_end - t0:.1f} s"
    calls = account(row, lab, job, doc, marks, out, total, items, 1)
    runs = Counter(c["batch_id"] for c in calls)
    row.detail = (
        f"{len(killed)} workers killed; failed handler attempts {doc['batch_metrics']['failed']}; "
        f"{sum(1 for n in runs.values() if n > 1)} batches ran twice (marker lines)"
    )
    row.check(doc["status"] == "succeeded", f"status {doc['status']}")
    row.check(doc["batch_metrics"]["lost"] >= 1, "no loss counted")
    row.check(doc["batch_metrics"]["failed"] == 0, "a lost worker counted as a handler failure")
    return row


# -- (b) SIGKILL the driver's host process, then resume ---------------------------------------
def fault_driver_kill(lab: Lab) -> Row:
    total = 120
    row = Row(
        "(b) SIGKILL the driver's host process mid-job, then `resume --wait`",
        f"{total} batches x 1 item, 2 workers, 100 ms each",
    )
    marks, out = lab.fresh("b")
    items = list(range(total))
    api = lab.apis["marking"]
    job, t0 = submit(
        api,
        lab_submission(items, marks, out, sleep=0.1),
    )
    wait_for(lambda: len(marks_of(marks)) >= 30, 60, "30 batches to run")
    state = lab.client.store.read_state(api.name, job.job_id)
    pid = state["driver"]["pid"]
    driver = psutil.Process(pid)
    children = driver.children(recursive=True)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()

    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not any(alive(c) for c in children), 30, "the job's workers to exit")
    orphans = [c.pid for c in children if alive(c)]
    workers_gone = time.time() - killed_at
    ledger_before = ledger_succeeded(lab, api.name, job.job_id)
    before = marks_of(marks)
    first_end: dict[str, float] = {}
    for c in before:
        first_end.setdefault(c["batch_id"], c["time"])
    t_resume = time.time()
    result = lab.cli("resume", api.name, job.job_id, "--wait", timeout=120)
    t_cli = time.time()
    resume_said = ""
    if result.returncode != 0:
        # `resume --wait` gave up (e.g. it judged the job interrupted): what really happened?
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        resume_said = (
            f"`resume --wait` exited {result.returncode} after {t_cli - t_resume:.1f} s: "
            f"{last[:160]}; "
        )
        row.warnings.append(
            f"`resume --wait` exited {result.returncode} though the job went on: {last[:200]}"
        )
        doc, t_end = wait_terminal(job, 90)
    else:
        doc, t_end = job.status["job_status"], t_cli
    row.wall = f"{t_end - t0:.1f} s (resume -> final {t_end - t_resume:.1f} s)"
    calls = account(row, lab, job, doc, marks, out, total, items, 1)
    after = [c for c in calls if c["time"] > killed_at]
    rerun = {c["batch_id"] for c in after if c["batch_id"] in first_end}
    index = {c["batch_id"]: int(c["batch_id"].rsplit("-", 1)[1]) for c in calls}
    ledgered_rerun = {b for b in rerun if index[b] in ledger_before}
    ages = sorted(killed_at - first_end[b] for b in rerun)
    oldest = ages[-1] if ages else 0.0
    complete = (marks / "complete").read_text() if (marks / "complete").exists() else ""
    row.detail = resume_said + (
        f"killed after {len(first_end)} handler calls; ledger held {len(ledger_before)}; "
        f"workers gone {workers_gone:.1f} s after the kill (orphans: {len(orphans)}); "
        f"already-succeeded batches run again: {len(rerun)} (ledgered: {len(ledgered_rerun)}), "
        f"oldest finished {oldest:.2f} s before the kill vs checkpoint window "
        f"{CHECKPOINT_INTERVAL:g} s; on_job_complete ran {complete.count('done')}x; "
        f"run {doc['run']}"
    )
    row.check(doc["status"] == "succeeded", f"status {doc['status']}")
    row.check(not ledgered_rerun, f"{len(ledgered_rerun)} batches in the ledger ran again")
    # a batch finishes (marker), its result reaches the driver, the next checkpoint writes it
    row.check(oldest <= CHECKPOINT_INTERVAL + 0.5, f"rerun of a batch {oldest:.2f} s old")
    row.check(complete.count("done") == 1, "on_job_complete did not run exactly once")
    row.check(not orphans, f"worker processes outlived their driver: {orphans}")
    for orphan in orphans:  # started by our job: do not leave them behind
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(orphan).kill()
    return row


# -- (c) a worker's network link cut ------------------------------------------------------------
NET = {"sched": "10.232.0.1", "client": "10.232.0.2", "w1": "10.232.0.11", "w2": "10.232.0.12"}
COMM_ENV = {
    "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
    "DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP": "15s",  # distributed's minimum is 11 s
}


def fault_link_cut(lab: Lab) -> Row:
    total = 60
    row = Row(
        "(c) scheduler + 2 workers in separate network namespaces; one worker's link cut",
        f"{total} batches x 1 item, 2 workers, 200 ms each",
    )
    from netns import Topology, netns_available

    ok, reason = netns_available()
    if not ok:
        row.status = "skipped"
        row.problems.append(f"network namespaces unavailable: {reason}")
        return row
    marks, out = lab.fresh("c")
    items = list(range(total))
    address = f"tcp://{NET['sched']}:8786"
    env = {"DASK_TEMPORARY_DIRECTORY": str(lab.root / "c" / "dask-tmp")}
    with Topology(NET, log_dir=lab.root / "c" / "logs") as net:
        cmd = [PYTHON, "-m", "distributed.cli.dask_scheduler", "--host", NET["sched"]]
        sched_env = {**COMM_ENV, **env, "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "5s"}
        sched = net.popen("sched", [*cmd, "--port", "8786", "--no-dashboard"], env=sched_env)
        wait_log(net, "sched", sched, "Scheduler at:")
        procs = {}
        for host in ("w1", "w2"):
            args = ["--nthreads", "1", "--nworkers", "1", "--host", NET[host], "--no-dashboard"]
            cmd = [PYTHON, "-m", "distributed.cli.dask_worker", address, *args]
            procs[host] = net.popen(host, cmd, env={**COMM_ENV, **env})
        for host, proc in procs.items():
            wait_log(net, host, proc, "Registered to:")
        submission = lab.root / "c" / "submission.json"
        submission.write_text(json.dumps(lab_submission(items, marks, out, sleep=0.2)))
        api = lab.apis["marking"].name
        earlier = {j["job_id"] for j in lab.client.list_jobs(api)}
        cli = [PYTHON, "-m", "dask_batchapi.api.cli", "submit", api, str(submission)]
        cli += ["--cluster", address, "--wait", "-o", "json"]
        t0 = time.time()
        proc = net.popen(
            "client",
            cli,
            env={**COMM_ENV, **env, "DASK_BATCHAPI_STORE": str(lab.store)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

        def progressed() -> tuple[batchapi.Job, int] | None:
            if proc.poll() is not None:
                raise RuntimeError(f"submit exited early: {proc.communicate()}")
            jobs = [j for j in lab.client.list_jobs(api) if j["job_id"] not in earlier]
            if jobs and jobs[0]["batch_metrics"]["succeeded"] >= 8:
                return lab.client.get_job(api, jobs[0]["job_id"]), jobs[0]["batch_metrics"][
                    "succeeded"
                ]
            return None

        job, succeeded_at_cut = wait_for(progressed, 60, "8 batches to succeed", step=0.1)
        w2_ns = f"net:[{net.inode('w2')}]"
        cut_at = time.time()
        net.cut("w2")
        stdout, stderr = proc.communicate(timeout=90)
        t_end = time.time()
        row.check(proc.returncode == 0, f"submit exited {proc.returncode}: {stderr[-300:]}")
        doc = json.loads(stdout)["job_status"] if stdout.strip() else job.status["job_status"]
    row.wall = f"{t_end - t0:.1f} s"
    calls = account(row, lab, job, doc, marks, out, total, items, 1)
    runs = Counter(c["batch_id"] for c in calls)
    on_cut = sum(1 for c in calls if c["netns"] == w2_ns)
    row.detail = (
        f"w2 cut after {succeeded_at_cut} successes; cut -> final status "
        f"{t_end - cut_at:.1f} s; {on_cut} handler calls on w2; "
        f"{sum(1 for n in runs.values() if n > 1)} batches ran twice"
    )
    row.check(doc["status"] == "succeeded", f"status {doc['status']}")
    return row


def wait_log(net, host: str, proc: subprocess.Popen, marker: str, timeout: float = 30) -> None:
    log = net.logs[host][-1]
    wait_for(
        lambda: (
            (proc.poll() is None or _raise(f"{host} exited:\n{net.tail()}"))
            and marker in log.read_text(errors="replace")
        ),
        timeout,
        f"{host}: {marker!r}",
        step=0.1,
    )


def _raise(message: str):
    raise RuntimeError(message)


# -- (d) a handler failing on chosen items -------------------------------------------------------
def fault_handler_errors(lab: Lab) -> Row:
    total, size = 100, 2
    items = list(range(total * size))
    bad = [15, 64, 131, 199]  # batches 7, 32, 65, 99
    row = Row(
        "(d) handler raises on chosen items (max_receive_count 2)",
        f"{total} batches x {size} items, 2 workers",
    )
    marks, out = lab.fresh("d")
    job, t0 = submit(
        lab.apis["marking"],
        lab_submission(
            items,
            marks,
            out,
            batch_size=size,
            fail_items=bad,
            extra={"dead_letter": {"max_receive_count": 2}},
        ),
    )
    doc, t_end = wait_final(job, 60, row)
    row.wall = f"{t_end - t0:.1f} s"
    account(row, lab, job, doc, marks, out, total, items, size)
    expected = {f"{job.job_id}-{b // size:06d}" for b in bad}
    records = job.dead_letter()
    got = {r["batch_id"] for r in records}
    payload_ok = all(
        r["payload"] == items[int(r["batch_id"][-6:]) * size : (int(r["batch_id"][-6:]) + 1) * size]
        for r in records
    )
    tb_ok = all("ValueError" in r["traceback"] and r["attempts"] == 2 for r in records)
    row.detail = (
        f"dead letter == the {len(expected)} chosen batches: {got == expected}; payloads = their "
        f"items: {payload_ok}; traceback + 2 attempts each: {tb_ok}; failed attempts "
        f"{doc['batch_metrics']['failed']}"
    )
    row.check(doc["status"] == "completed_with_failures", f"status {doc['status']}")
    row.check(
        got == expected and payload_ok and tb_ok, "dead letter differs from the chosen batches"
    )
    row.check(doc["batch_metrics"]["failed"] == 2 * len(bad), "failed attempts != 2 per bad batch")
    row.check(doc["batch_metrics"]["succeeded"] == total - len(bad), "successes != the rest")
    return row


# -- (e) out of memory ---------------------------------------------------------------------------
def fault_oom(lab: Lab) -> Row:
    items = ["a", "b", "c", "d", "e", "hog"]
    total = len(items)
    row = Row(
        "(e) handler allocates 700 MB under compute.mem 400Mi",
        f"{total} batches x 1 item, 1 worker",
    )
    marks, out = lab.fresh("e")
    job, t0 = submit(
        lab.apis["hog"],
        lab_submission(items, marks, out, workers=1),
    )
    doc, t_end = wait_final(job, 120, row)
    row.wall = f"{t_end - t0:.1f} s"
    account(row, lab, job, doc, marks, out, total, items, 1, 1, "the memory hog")
    error = doc.get("error") or {}
    row.detail = f"error.reason {error.get('reason')!r}: {str(error.get('message'))[:110]}"
    row.check(doc["status"] == "worker_oom", f"status {doc['status']}")
    row.check(error.get("reason") == "out_of_memory", "error.reason is not out_of_memory")
    return row


# -- (f) Handler.__init__ raising -----------------------------------------------------------------
def fault_init_error(lab: Lab) -> Row:
    total = 20
    row = Row("(f) Handler.__init__ raises", f"{total} batches x 1 item, 2 workers")
    marks, out = lab.fresh("f")
    items = list(range(total))
    job, t0 = submit(
        lab.apis["marking"],
        lab_submission(items, marks, out, init_error=True),
    )
    doc, t_end = wait_final(job, 60, row)
    row.wall = f"{t_end - t0:.1f} s"
    account(row, lab, job, doc, marks, out, total, items, 1, None, "the handler cannot start")
    error = doc.get("error") or {}
    start, end = parse_iso(doc["start_time"]), parse_iso(doc["end_time"])
    row.detail = (
        f"submit -> final status {t_end - t0:.1f} s (driver start -> end {end - start:.1f} s); "
        f"error: {str(error.get('message'))[:90]}"
    )
    row.check(doc["status"] == "worker_error", f"status {doc['status']}")
    row.check("model weights not found" in str(error.get("message")), "message lacks the cause")
    row.check(t_end - t0 < 30, "not fast")
    return row


TIMEOUT = 6.0  # long enough that the deadline falls mid-job even when cluster start is slow


# -- (g) job timeout -----------------------------------------------------------------------------
def fault_timeout(lab: Lab) -> Row:
    total = 100
    row = Row(f"(g) job timeout: {TIMEOUT:g} s", f"{total} batches x 1 item, 1 worker, 300 ms each")
    marks, out = lab.fresh("g")
    items = list(range(total))
    job, t0 = submit(
        lab.apis["marking"],
        lab_submission(items, marks, out, workers=1, sleep=0.3, extra={"timeout": TIMEOUT}),
    )
    doc, t_end = wait_final(job, 60, row)
    time.sleep(1.5)  # anything still running would write a marker now
    row.wall = f"{t_end - t0:.1f} s"
    account(row, lab, job, doc, marks, out, total, items, 1, None, "the job timed out")
    created = parse_iso(doc["created_time"])
    deadline = created + TIMEOUT
    end = parse_iso(doc["end_time"])
    late = [c for c in marks_of(marks) if c["time"] > end]
    row.detail = (
        f"deadline -> final status {end - deadline:.2f} s (end_time), {t_end - deadline:.2f} s "
        f"(seen by a reader); driver running {parse_iso(doc['start_time']) - created:.1f} s "
        f"after submit; handler calls ending after the final status: {len(late)}"
    )
    row.check(doc["status"] == "timed_out", f"status {doc['status']}")
    start = parse_iso(doc["start_time"])
    if start > deadline:  # the deadline passed while the runner was still starting its cluster
        row.warnings.append(
            f"the deadline passed {start - deadline:.1f} s before the driver was running; it "
            f"still dispatched batches and ended {end - start:.2f} s after its start"
        )
        row.check(end - start < 3, "timed_out more than 3 s after the driver started")
    else:
        row.check(end - deadline < 3, "timed_out more than 3 s after the deadline")
    row.check(len(late) <= 1, f"{len(late)} batches ran after the final status")
    return row


# -- (h) stop ------------------------------------------------------------------------------------
def fault_stop(lab: Lab) -> Row:
    total = 200
    row = Row(
        "(h) `dask-batchapi stop` mid-job", f"{total} batches x 1 item, 2 workers, 100 ms each"
    )
    marks, out = lab.fresh("h")
    items = list(range(total))
    api = lab.apis["marking"]
    job, t0 = submit(
        api,
        lab_submission(items, marks, out, sleep=0.1),
    )
    wait_for(lambda: len(marks_of(marks)) >= 5, 60, "5 batches to run")
    t_stop = time.time()
    result = lab.cli("stop", api.name, job.job_id)
    t_stopped_cli = time.time()
    row.check(result.returncode == 0, f"stop exited {result.returncode}: {result.stderr[-200:]}")
    doc, t_end = wait_final(job, 30, row)
    time.sleep(1.0)
    row.wall = f"{t_end - t0:.1f} s"
    account(row, lab, job, doc, marks, out, total, items, 1, None, "stopped")
    end = parse_iso(doc["end_time"])
    late = [c for c in marks_of(marks) if c["time"] > end]
    stop_file = lab.store / "jobs" / api.name / job.job_id / "stop"
    written = stop_file.stat().st_mtime if stop_file.exists() else t_stopped_cli
    row.detail = (
        f"stop command issued -> final status {end - t_stop:.2f} s (`stop` CLI took "
        f"{t_stopped_cli - t_stop:.2f} s; stop request written -> end_time {end - written:.2f} s); "
        f"handler calls ending after the final status: {len(late)}"
    )
    row.check(doc["status"] == "stopped", f"status {doc['status']}")
    row.check(end - t_stop < 8, "stop took 8 s or more")
    row.check(len(late) <= 2, f"{len(late)} batches ran after the final status")
    return row


# -- (i) the store's disk fills up mid-job --------------------------------------------------------
def fault_full_store(lab: Lab) -> Row:
    total = 150
    row = Row(
        "(i) the store's disk (a 20 MB tmpfs) fills up mid-job, then room again and `resume`",
        f"{total} batches x 1 item, 2 workers, 50 ms each",
    )
    mount = lab.root / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)]).returncode:
        row.warnings.append("skipped: mounting a tmpfs needs root")
        return row
    store_env = os.environ["DASK_BATCHAPI_STORE"]
    try:
        os.environ["DASK_BATCHAPI_STORE"] = str(mount / "store")
        client = batchapi.client(store=str(mount / "store"))
        api = client.deploy(lab.root / "projects" / "rel-marking")
        marks, out = lab.fresh("i")
        items = list(range(total))
        job, t0 = submit(api, lab_submission(items, marks, out, sleep=0.05))
        wait_for(lambda: len(marks_of(marks)) >= 20, 60, "20 batches to run")
        filler = mount / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        t_full = time.time()
        doc, t_end = wait_terminal(job, 60)
        error = doc.get("error") or {}
        ended = f"{doc['status']} {t_end - t_full:.1f} s after the disk filled"
        row.check(doc["status"] == "unexpected_error", f"status {doc['status']} when full")
        row.check("No space left" in str(error.get("message")), "the cause is not in the status")
        filler.unlink()
        t_resume = time.time()
        result = lab.cli("resume", api.name, job.job_id, "--wait", timeout=120)
        row.check(result.returncode == 0, f"resume exited {result.returncode}: {result.stderr}")
        doc, t_end = wait_terminal(job, 90)
        row.wall = f"{t_end - t0:.1f} s (resume -> final {t_end - t_resume:.1f} s)"
        lab_store = lab.client
        lab.client = client  # the ledger of this job is in the small store
        try:
            account(row, lab, job, doc, marks, out, total, items, 1)
        finally:
            lab.client = lab_store
        row.detail = f"ended {ended}: {str(error.get('message'))[:100]}; resumed at once"
        row.check(doc["status"] == "succeeded", f"status {doc['status']} after resume")
    finally:
        os.environ["DASK_BATCHAPI_STORE"] = store_env
        wait_for_runners(mount)
        subprocess.run(["umount", "-l", str(mount)])
    return row


# -- (j) two concurrent resumes ----------------------------------------------------------------------
RESUME = """
import sys, time
import dask_batchapi as batchapi
from dask_batchapi.errors import BatchAPIError
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
try:
    batchapi.BatchClient().resume_job(sys.argv[2], sys.argv[3])
    print("resumed")
except BatchAPIError as exc:
    print("refused:", exc)
"""


def fault_concurrent_resume(lab: Lab) -> Row:
    total = 100
    row = Row(
        "(j) two processes call `BatchClient().resume_job` at the same moment (warm runner up)",
        f"{total} batches x 1 item, 2 workers, 50 ms each",
    )
    marks, out = lab.fresh("j")
    items = list(range(total))
    api = lab.apis["marking"]
    job, t0 = submit(api, lab_submission(items, marks, out, sleep=0.05))
    wait_for(lambda: len(marks_of(marks)) >= 20, 60, "20 batches to run")
    lab.cli("stop", api.name, job.job_id)
    wait_terminal(job, 30)
    time.sleep(1.0)  # batches running at the stop finish on their workers
    t_resume = time.time()
    start = str(t_resume + 2.0)
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", RESUME, start, api.name, job.job_id], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    answers = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    doc, t_end = wait_terminal(job, 90)
    row.wall = f"{t_end - t0:.1f} s"
    calls = account(row, lab, job, doc, marks, out, total, items, 1)
    after = Counter(c["batch_id"] for c in calls if c["time"] > t_resume)
    twice = [b for b, n in after.items() if n > 1]
    row.detail = f"answers: {answers[0][:90]!r} / {answers[1]!r}; run {doc['run']}; " + (
        f"batches run twice after the resumes: {len(twice)}"
    )
    resumed = [a for a in answers if a == "resumed"]
    row.check(len(resumed) == 1, f"{len(resumed)} resumes succeeded")
    row.check(not twice, f"{len(twice)} batches ran twice: two drivers")
    row.check(doc["status"] == "succeeded" and doc["run"] == 2, f"status {doc['status']}")
    return row


# -- (k) a corrupted state file --------------------------------------------------------------------
def fault_corrupt_state(lab: Lab) -> Row:
    total = 10
    row = Row("(k) one job's state.json truncated", f"2 jobs of {total} batches x 1 item")
    marks, out = lab.fresh("k")
    items = list(range(total))
    api = lab.apis["marking"]
    good, t0 = submit(api, lab_submission(items, marks, out))
    bad, _ = submit(api, lab_submission(items, marks, out))
    wait_terminal(good, 60)
    doc, t_end = wait_terminal(bad, 60)
    row.wall = f"{t_end - t0:.1f} s"
    state = lab.store / "jobs" / api.name / bad.job_id / "state.json"
    state.write_text(state.read_text()[:25])
    listing = lab.cli("get", api.name, "-o", "json")
    rows = {j["job_id"]: j for j in json.loads(listing.stdout or "[]")}
    one = lab.cli("get", api.name, bad.job_id)
    apis = lab.cli("get")
    row.status = rows.get(good.job_id, {}).get("status", "-")
    line = one.stderr.strip()
    row.detail = f"`get {api.name}`: the other job {row.status}, this one marked "
    row.detail += f"{rows.get(bad.job_id, {}).get('status')!r}; `get` of it: {line[:120]!r}"
    row.check(listing.returncode == 0 and apis.returncode == 0, "the listing broke")
    row.check(rows.get(bad.job_id, {}).get("unreadable") is True, "the broken job is not marked")
    row.check(one.returncode != 0 and "Traceback" not in one.stderr, "traceback or exit 0")
    row.check(len(line.splitlines()) == 1 and "state.json" in line, "not one line naming the file")
    return row


FAULTS: dict[str, Callable[[Lab], Row]] = {
    "a": fault_worker_kills,
    "b": fault_driver_kill,
    "c": fault_link_cut,
    "d": fault_handler_errors,
    "e": fault_oom,
    "f": fault_init_error,
    "g": fault_timeout,
    "h": fault_stop,
    "i": fault_full_store,
    "j": fault_concurrent_resume,
    "k": fault_corrupt_state,
}


def wait_for_runners(root: Path, timeout: float = 20) -> None:
    """Let the detached runners of jobs in ``root`` (and their clusters) exit before cleanup."""

    def ours() -> list[psutil.Process]:
        procs = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if "dask_batchapi.driver" in cmdline and any(str(root) in a for a in cmdline):
                procs.append(proc)
        return procs

    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not ours(), timeout, "the jobs' runners to exit", step=0.5)


def write_results(rows: list[Row], header: list[str], seconds: float, command: str) -> None:
    load_section = ""
    if RESULTS.exists():
        text = RESULTS.read_text()
        if LOAD_MARKER in text:
            load_section = text[text.index(LOAD_MARKER) :]
    body = [
        "# dask-batchapi — reliability results",
        "",
        f"Command: `{command}` (total {seconds:.0f} s). Produced by `benchmarks/reliability.py`;",
        "the load section below comes from `benchmarks/load.py`.",
        "",
        "## Machine",
        "",
        *header,
        "",
        "## Faults injected",
        "",
        "Every job writes its return values to an `output` location; *output parts* must be "
        "exactly the batches the ledger calls succeeded, each holding its own items. *Processed "
        "at least once* counts the distinct batches whose handler call ran to its end (a marker "
        "line per call); *lost* is the framework's count of batch runs lost with a worker.",
        "",
        table(rows),
        "",
    ]
    RESULTS.write_text("\n".join(body) + load_section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated fault letters (default all)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = parser.parse_args()
    wanted = [f.strip() for f in args.only.split(",") if f.strip()] or list(FAULTS)
    header = machine()
    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="batchapi-reliability-"))
    rows: list[Row] = []
    try:
        lab = Lab(root)
        for letter in wanted:
            t = time.time()
            try:
                row = FAULTS[letter](lab)
            except Exception as exc:  # noqa: BLE001 - one broken fault must not hide the others
                traceback.print_exc()
                row = Row(f"({letter}) {FAULTS[letter].__name__}", "-")
                row.problems.append(f"{type(exc).__name__}: {exc}"[:300])
            rows.append(row)
            print(
                f"({letter}) {time.time() - t:5.1f} s  {row.status:<24} {row.verdict}", flush=True
            )
    finally:
        if args.keep:
            print(f"scratch directory kept: {root}")
        else:
            wait_for_runners(root)
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.time() - started
    header.append("- load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print()
    print(table(rows))
    print(f"\ntotal {seconds:.0f} s")
    if not args.no_write:
        command = ".venv/bin/python benchmarks/reliability.py" + (
            f" --only {args.only}" if args.only else ""
        )
        write_results(rows, header, seconds, command)
        print(f"written: {RESULTS.relative_to(ROOT)}")
    return 0 if all(not r.problems for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
