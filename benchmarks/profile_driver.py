"""Profile one dask-batchapi job end to end with py-spy (driver process and both workers).

    .venv/bin/pip install py-spy
    .venv/bin/python benchmarks/profile_driver.py                 # 20,000 no-op batches x 10
    .venv/bin/python benchmarks/profile_driver.py --batches 200 --busy 0.05
    .venv/bin/python benchmarks/profile_driver.py --raw           # the same with raw client.map

A child process starts the benchmark cluster (2 workers x 1 thread), deploys the no-op (or busy)
handler and runs one job with the driver on a thread; py-spy samples it and its workers
(``--subprocesses``, ``--threads``, ``--idle``). The summary gives, per process and thread,
the share of samples and the hottest frames: self time (where the CPU is) and inclusive time of
the package's own functions (which step costs what). Raw samples stay in ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def child(args: argparse.Namespace) -> None:
    import cloudpickle
    from _common import BUSY_HANDLER, NOOP_HANDLER, local_client, run_job_in_process, write_project

    import dask_batchapi as batchapi

    tmp = Path(tempfile.mkdtemp(prefix="batchapi-profile-"))
    handler = BUSY_HANDLER if args.busy else NOOP_HANDLER
    with local_client() as client:
        api = batchapi.client(store=str(tmp / "store"), cluster=client).deploy(
            write_project(tmp / "proj", "profiled", handler)
        )
        size = 1 if args.busy else 10
        submission = {
            "workers": 2,
            "item_list": {"items": list(range(args.batches * size)), "batch_size": size},
            "config": {"seconds": args.busy or 0},
        }
        run_job_in_process(api, {**submission, "item_list": {"items": [1], "batch_size": 1}})
        print("READY", os.getpid(), flush=True)
        sys.stdin.readline()  # the profiler is attached
        if args.raw:
            cloudpickle.register_pickle_by_value(sys.modules[__name__])
            start = time.perf_counter()
            batches = [list(range(i * size, (i + 1) * size)) for i in range(args.batches)]
            client.gather(client.map(_noop, batches, pure=False))
            elapsed, status = time.perf_counter() - start, "raw"
        else:
            elapsed, job = run_job_in_process(api, submission)
            status = job.status["job_status"]["status"]
        print(json.dumps({"seconds": elapsed, "status": status, "batches": args.batches}))
    shutil.rmtree(tmp, ignore_errors=True)


def _noop(batch):
    return None


# leaf frames of a thread that waits (py-spy --idle keeps them, so wall time adds up)
_IDLE = (
    "Condition.wait",
    "EpollSelector.select",
    "Connection._recv",
    "Popen.poll",
    "_wait_for_tstate_lock",
    "resource_tracker.py",
    "_worker (concurrent/futures/thread.py:81)",
    "Event.wait",
    "SimpleQueue.get",
    "sleep",
    "readline",
    "Connection.poll",
    "JobDriver._wait (",  # SimpleQueue.get(timeout) is C: py-spy shows its caller
    "child (profile_driver.py",  # waiting on stdin for the profiler to attach
)


def _is_idle(frame: str) -> bool:
    return frame.startswith("thread ") or any(tag in frame for tag in _IDLE)


def summarize(raw_path: Path, top: int = 12, rate: int = 250) -> str:
    """Per process/thread: wall and busy seconds, hottest busy frames, the package's frames."""
    wall: collections.Counter = collections.Counter()
    busy: collections.Counter = collections.Counter()
    self_time: dict = collections.defaultdict(collections.Counter)
    ours: dict = collections.defaultdict(collections.Counter)
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        key, rest = _owner(stack)
        n = int(count)
        wall[key] += n
        if rest and not _is_idle(rest[-1]):
            busy[key] += n
            self_time[key][rest[-1]] += n
        for frame in {f for f in rest if "dask_batchapi/" in f}:
            ours[key][frame] += n
    out = [f"seconds = samples / {rate}; 'busy' excludes samples parked in a wait"]
    for key, n in wall.most_common():
        if busy[key] < 25 and not ours[key]:
            continue
        out.append(f"\n== {key}: {n / rate:.2f} s sampled, {busy[key] / rate:.2f} s busy")
        out.append("  busy, self (where the CPU goes):")
        out += [f"    {c / rate:7.2f} s  {f[:130]}" for f, c in self_time[key].most_common(top)]
        if ours[key]:
            out.append("  inclusive, dask_batchapi frames (busy or waiting):")
            out += [f"    {c / rate:7.2f} s  {f[:130]}" for f, c in ours[key].most_common(top)]
    return "\n".join(out)


_PROCESS = re.compile(r'process (\d+):"([^"]*)";?')


def _owner(stack: str) -> tuple[str, list[str]]:
    """('<role> (pid) / <thread name>', frames below the thread) of one py-spy stack."""
    pid, cmd, pos = "?", "", 0
    while (match := _PROCESS.match(stack, pos)) is not None:  # child processes nest
        pid, cmd, pos = match.group(1), match.group(2), match.end()
    rest = [f for f in stack[pos:].split(";") if f]
    role = "worker" if "spawn_main" in cmd else "driver+scheduler" if "--child" in cmd else cmd
    thread = "?"
    if rest and rest[0].startswith("thread "):
        thread = rest[0].split(":", 1)[-1].strip()
        rest = rest[1:]
    if thread.startswith(("Dask-Default-Threads", "1-Dask-Default-Threads")):
        thread = "task thread"
    return f"{role} (pid {pid}) / {thread}", rest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20000)
    parser.add_argument("--busy", type=float, default=0.0, help="seconds of CPU per batch")
    parser.add_argument("--raw", action="store_true", help="profile raw client.map instead")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "batchapi-profile"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    pyspy = shutil.which(
        "py-spy",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if not pyspy:
        print("py-spy is not installed: .venv/bin/pip install py-spy")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "profile.txt"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--batches",
        str(args.batches),
        "--busy",
        str(args.busy),
    ] + (["--raw"] if args.raw else [])
    raw.unlink(missing_ok=True)
    job = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = job.stdout.readline()  # after cluster start and a warm-up job
    if not ready.startswith("READY"):
        job.kill()
        print(f"profiled child did not start: {ready!r}")
        return 1
    spy = [
        pyspy,
        "record",
        "--pid",
        ready.split()[1],
        "--subprocesses",
        "--threads",
        "--idle",
        "-r",
        str(args.rate),
        "-f",
        "raw",
        "-o",
        str(raw),
    ]
    recorder = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)  # let py-spy attach to the child and its workers
    job.stdin.write("go\n")
    job.stdin.flush()
    print("\n".join(ln for ln in job.stdout.read().splitlines() if ln.startswith("{")))
    job.wait()
    _, err = recorder.communicate(timeout=60)
    if not raw.exists():
        print(err[-3000:])
        return 1
    summary = summarize(raw, rate=args.rate)
    (out / "summary.txt").write_text(summary)
    print(summary)
    print(f"\nraw samples: {raw}  (py-spy rate {args.rate}/s, idle samples included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
