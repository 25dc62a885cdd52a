"""(c) Driver memory: peak RSS of the process hosting the driver, item_list of N items.

Each measurement is a fresh process, at N = small and N = large (batch_size 100, 2 workers):

* in-process driver: a child process starts a LocalCluster (2 workers), deploys a no-op API,
  runs a tiny warm-up job (so imports are not counted), builds ``list(range(N))``, submits with
  ``cluster=client`` and waits. Peak RSS = ``VmHWM`` of that process (its RSS high-water mark,
  /proc/self/status; not ``ru_maxrss``, which a child inherits from its parent across ``exec``),
  which hosts the submitter, the driver thread and the cluster's scheduler (workers are other
  processes). The peak is also read after each phase, to say where growth happens.
* the same with the scheduler in its own process (``SubprocessCluster``): what the submitter and
  the driver alone cost, without the task specs the scheduler unpickles.
* detached driver (the CLI path): ``dask-batchapi submit`` with a submission file, then the
  peak RSS (``VmHWM`` from /proc, polled) of the ``dask_batchapi.driver`` process that hosts
  the driver and its own LocalCluster's scheduler.

The caller of an in-process submit holds its own ``list(range(N))``: that growth is the
caller's, so the child also reports the growth past the moment that list was built. The package
writes the items to the store at submit (segments of 10,000) and the driver streams them, so the
detached runner never holds the list.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    HERE,
    NOOP_HANDLER,
    WORKERS,
    Row,
    Stat,
    bench_env,
    peak_rss_mb,
    verdict,
    vm_hwm_mb,
    workdir,
    write_project,
)

BATCH_SIZE = 100


# -- child: in-process driver ------------------------------------------------------------------
def child_inproc(n_items: int, tmp: Path, scheduler: str = "local") -> dict:
    import logging

    from _common import run_job_in_process
    from distributed import Client, LocalCluster
    from distributed.deploy.subprocess import SubprocessCluster

    import dask_batchapi as batchapi

    logging.getLogger("distributed").setLevel(logging.ERROR)
    phases = {"start": peak_rss_mb()}
    kind = LocalCluster if scheduler == "local" else SubprocessCluster
    with (
        kind(n_workers=WORKERS, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        api = batchapi.client(store=str(tmp / "store"), cluster=client).deploy(
            write_project(tmp / "proj", "bench-mem", NOOP_HANDLER)
        )
        run_job_in_process(api, _submission(list(range(1000))))  # warm-up
        phases["cluster + warm-up job"] = peak_rss_mb()
        items = list(range(n_items))
        phases["items built"] = peak_rss_mb()
        start = time.perf_counter()
        job = api.submit(_submission(items))
        phases["submit returned"] = peak_rss_mb()
        job._driver.join()
        elapsed = time.perf_counter() - start
        phases["job done (peak)"] = peak_rss_mb()
        status = job.status["job_status"]["status"]
    return {
        "peak_mb": phases["job done (peak)"],
        "phases": phases,
        "status": status,
        "seconds": elapsed,
    }


def _submission(items: list) -> dict:
    return {"workers": WORKERS, "item_list": {"items": items, "batch_size": BATCH_SIZE}}


def measure_inproc(n_items: int, scheduler: str = "local") -> dict:
    with workdir() as tmp:
        out = subprocess.run(
            [
                sys.executable,
                str(HERE / "bench_memory.py"),
                "--child",
                str(n_items),
                str(tmp),
                "--scheduler",
                scheduler,
            ],
            capture_output=True,
            text=True,
            env=bench_env(),
            timeout=300,
            check=False,
        )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"memory child failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(lines[-1])


# -- the detached runner (CLI path) -------------------------------------------------------------
def measure_runner(n_items: int) -> dict:
    with workdir() as tmp:
        store = tmp / "store"
        env = bench_env(store)
        project = write_project(tmp / "proj", "bench-mem", NOOP_HANDLER)
        cli = [str(Path(sys.executable).parent / "dask-batchapi")]
        subprocess.run([*cli, "deploy", str(project)], env=env, check=True, capture_output=True)
        sub = tmp / "submission.json"
        sub.write_text(json.dumps(_submission(list(range(n_items)))))
        start = time.perf_counter()
        out = subprocess.run(
            [*cli, "submit", "bench-mem", str(sub)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        job_id = out.stdout.split()[0]
        state_path = store / "jobs" / "bench-mem" / job_id / "state.json"
        peak, pid, state = _follow_runner(state_path)
        return {
            "peak_mb": peak,
            "pid": pid,
            "status": state.get("status"),
            "seconds": time.perf_counter() - start,
        }


def _follow_runner(state_path: Path, timeout: float = 300) -> tuple[float, int, dict]:
    """Poll the runner's VmHWM until it exits; (peak MB, pid, final state)."""
    deadline = time.time() + timeout
    pid, peak, state = None, 0.0, {}
    while time.time() < deadline:
        state = _read_state(state_path)
        pid = pid or (state.get("driver") or {}).get("pid")
        if pid:
            hwm = vm_hwm_mb(pid)
            if hwm is None:  # the runner exited
                return peak, pid, state
            peak = max(peak, hwm)
        time.sleep(0.02)
    raise TimeoutError(f"runner of {state_path.parent.name} did not exit in {timeout} s")


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# -- orchestration -----------------------------------------------------------------------------
def run(client, api_factory, opts) -> list[Row]:
    """``opts``: sizes (small, large), repeats, runner (bool), extra_repeats, log."""
    small, large = opts["sizes"]
    rows: list[Row] = []
    extra = opts.get("extra_repeats", opts["repeats"])
    modes = [("in-process driver", measure_inproc, opts["repeats"])]
    if opts.get("runner", True):
        modes.append(("detached runner (CLI)", measure_runner, extra))
        modes.append(
            (
                "in-process driver, scheduler in own process",
                lambda n: measure_inproc(n, "subprocess"),
                extra,
            )
        )
    for label, measure, repeats in modes:
        peaks: dict[int, list[float]] = {small: [], large: []}
        phases: dict[int, dict] = {}  # of the last run, for the report
        beyond: dict[int, list[float]] = {small: [], large: []}
        for i in range(repeats):
            for n in (small, large):
                result = measure(n)
                if result["status"] != "succeeded":
                    raise RuntimeError(f"memory job ({label}, {n}) ended {result['status']}")
                peaks[n].append(result["peak_mb"])
                phases[n] = result.get("phases", {})
                if phases[n]:  # growth past the moment the caller's own list was built
                    beyond[n].append(phases[n]["job done (peak)"] - phases[n]["items built"])
                opts["log"](
                    f"  (c) {label} run {i + 1}: {n:,} items peak {result['peak_mb']:.0f} MB "
                    f"({result['seconds']:.1f} s)"
                )
        # in process, the caller's own list is in the same process: the target applies to the
        # growth past it (what the package adds); the detached runner holds no list at all
        has_beyond = bool(beyond[small]) and len(beyond[small]) == len(beyond[large])
        rows += _rows(label, small, large, peaks, target=not has_beyond)
        if has_beyond:
            rows.append(_beyond_items_row(label, small, large, beyond))
        opts.setdefault("phases", {})[label] = phases
    return rows


def _rows(
    label: str, small: int, large: int, peaks: dict[int, list[float]], target: bool
) -> list[Row]:
    diffs = [b - a for a, b in zip(peaks[small], peaks[large], strict=True)]
    diff = Stat(diffs)
    return [
        Row(
            "c",
            f"{small:,} items, batch_size {BATCH_SIZE}",
            label,
            "peak RSS MB",
            Stat(peaks[small]),
            spec=".0f",
        ),
        Row(
            "c",
            f"{large:,} items, batch_size {BATCH_SIZE}",
            label,
            "peak RSS MB",
            Stat(peaks[large]),
            spec=".0f",
        ),
        Row(
            "c",
            f"growth {small:,} -> {large:,} items",
            label,
            "MB",
            diff,
            spec=".0f",
            target="<=50 MB" if target else "",
            verdict=verdict(diff.median <= 50) if target else "info (the caller's list included)",
        ),
    ]


def _beyond_items_row(label: str, small: int, large: int, beyond: dict) -> Row:
    """Growth of the peak past the caller's own items list, from the small to the large job."""
    growth = Stat([b - a for a, b in zip(beyond[small], beyond[large], strict=True)])
    return Row(
        "c",
        f"growth {small:,} -> {large:,}, past the caller's list",
        label,
        "MB",
        growth,
        spec=".0f",
        target="<=50 MB",
        verdict=verdict(growth.median <= 50),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", type=int, required=True)
    parser.add_argument("tmp")
    parser.add_argument("--scheduler", choices=["local", "subprocess"], default="local")
    args = parser.parse_args()
    print(json.dumps(child_inproc(args.child, Path(args.tmp), args.scheduler)), flush=True)


if __name__ == "__main__":
    main()
