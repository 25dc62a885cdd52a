"""(d) Latency: submit -> first batch running, and last batch done -> final status recorded.

The handler writes ``time.time()`` at the start of its first ``handle_batch`` and at the end of
each batch to per-worker files; "final status recorded" is the modification time of the job's
``state.json`` in the (local) store once it holds a final status. All clocks are this machine's
wall clock. A job is 4 batches of 1 item on 2 workers.

* in-process driver on an existing client: ``api.submit`` with ``cluster=client``.
* CLI path, cold: ``dask-batchapi submit API FILE`` with ``keep-alive`` 0 (a new detached runner
  that starts its own LocalCluster of 2 workers).
* CLI path, warm: the same with ``keep-alive`` on, after an earlier job: the runner kept warm
  takes the job (``dask_batchapi.driver.warm``). Also reported: when the CLI returned, and when the driver started (the job's
  ``start_time``, i.e. its cluster was up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    PROBE_HANDLER,
    WORKERS,
    Row,
    Stat,
    bench_env,
    run_job_in_process,
    settle,
    verdict,
    vm_hwm_mb,
    workdir,
    write_project,
)

N_BATCHES = 4
WARM_KEEP_ALIVE = 15  # seconds the warm runner waits for the next job
TERMINAL = {
    "succeeded",
    "completed_with_failures",
    "enqueue_failed",
    "worker_error",
    "worker_oom",
    "timed_out",
    "stopped",
    "unexpected_error",
}


def _submission(probe_dir: Path) -> dict:
    return {
        "workers": WORKERS,
        "item_list": {"items": list(range(N_BATCHES)), "batch_size": 1},
        "config": {"probe_dir": str(probe_dir)},
    }


def _probes(probe_dir: Path) -> tuple[float, float]:
    """(earliest first-batch start, latest batch end) over the workers."""
    first = [float(p.read_text()) for p in probe_dir.glob("first-*") if not p.name.endswith("tmp")]
    last = [float(p.read_text()) for p in probe_dir.glob("last-*") if not p.name.endswith("tmp")]
    if not first or not last:
        raise RuntimeError(f"the probe handler wrote nothing in {probe_dir}")
    return min(first), max(last)


def _parse_iso(value: str | None) -> float | None:
    from dask_batchapi.status import parse_iso

    return parse_iso(value)


def measure_inproc(api, store: Path, tmp: Path, i: int) -> dict:
    probe_dir = tmp / f"probe-inproc-{i}"
    probe_dir.mkdir()
    t_submit = time.time()
    _, job = run_job_in_process(api, _submission(probe_dir))
    state_path = store / "jobs" / api.name / job.job_id / "state.json"
    state = json.loads(state_path.read_text())
    if state["status"] != "succeeded":
        raise RuntimeError(f"latency job {job.job_id} ended {state['status']}")
    first, last = _probes(probe_dir)
    return {
        "submit_to_first": first - t_submit,
        "last_to_final": state_path.stat().st_mtime - last,
        "submit_to_driver_start": (_parse_iso(state.get("start_time")) or t_submit) - t_submit,
    }


def measure_cli(
    project: Path, tmp: Path, i: int, address: str | None = None, warm: bool = False
) -> dict:
    """The CLI path; with ``address``, ``--cluster ADDRESS`` (an existing, warm cluster); with
    ``warm``, the embedded cluster's runner kept warm by an earlier job (``keep-alive``)."""
    store = tmp / f"store-cli-{i}"
    env = bench_env(store)
    if warm:
        env["DASK_BATCHAPI__KEEP_ALIVE"] = str(WARM_KEEP_ALIVE)
    cli = str(Path(sys.executable).parent / "dask-batchapi")
    subprocess.run([cli, "deploy", str(project)], env=env, check=True, capture_output=True)
    probe_dir = tmp / f"probe-cli-{i}"
    probe_dir.mkdir()
    sub = tmp / f"submission-{i}.json"
    sub.write_text(json.dumps(_submission(probe_dir)))
    t_submit = time.time()
    where = ["--cluster", address] if address else []
    out = subprocess.run(
        [cli, "submit", "bench-probe", str(sub), *where],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    t_returned = time.time()
    job_id = out.stdout.split()[0]
    state_path = store / "jobs" / "bench-probe" / job_id / "state.json"
    state, seen = _wait_terminal(state_path)
    mtime = state_path.stat().st_mtime
    if state["status"] != "succeeded":
        raise RuntimeError(f"CLI latency job {job_id} ended {state['status']}")
    if not warm:
        _wait_exit((state.get("driver") or {}).get("pid"))  # let its cluster close first
    first, last = _probes(probe_dir)
    return {
        "submit_to_first": first - t_submit,
        "last_to_final": mtime - last,
        "cli_returned": t_returned - t_submit,
        "runner_up": seen.get("enqueuing", t_submit) - t_submit,
        "submit_to_driver_start": (_parse_iso(state.get("start_time")) or t_submit) - t_submit,
    }


def _wait_terminal(state_path: Path, timeout: float = 120) -> tuple[dict, dict]:
    """The final state, and when each status was first seen (polled every 10 ms)."""
    deadline = time.time() + timeout
    seen: dict[str, float] = {}
    while time.time() < deadline:
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        seen.setdefault(state.get("status"), time.time())
        if state.get("status") in TERMINAL:
            return state, seen
        time.sleep(0.01)
    raise TimeoutError(f"job of {state_path} did not finish in {timeout} s")


def _wait_exit(pid: int | None, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while pid and time.time() < deadline and vm_hwm_mb(pid) is not None:
        time.sleep(0.05)


def run(client, api_factory, opts) -> list[Row]:
    """``opts``: repeats, cli_repeats, store, log."""
    api = api_factory("bench-probe", PROBE_HANDLER)
    results: dict[str, list[dict]] = {"inproc": [], "cli": [], "cli-warm": [], "cli-address": []}
    with workdir() as tmp:
        measure_inproc(api, opts["store"], tmp, -1)  # warm
        settle(client)
        for i in range(opts["repeats"]):
            results["inproc"].append(measure_inproc(api, opts["store"], tmp, i))
            settle(client)
            r = results["inproc"][-1]
            opts["log"](
                f"  (d) in-process run {i + 1}: submit->first {r['submit_to_first']:.3f} s, "
                f"last->final {r['last_to_final']:.3f} s"
            )
        project = write_project(tmp / "cli-proj", "bench-probe", PROBE_HANDLER)
        address = client.scheduler.address
        measure_cli(project, tmp, 300, warm=True)  # starts the runner that stays warm
        for i in range(opts["cli_repeats"]):
            for key, n, where, warm in (
                ("cli", i, None, False),
                ("cli-warm", 200 + i, None, True),
                ("cli-address", 100 + i, address, False),
            ):
                results[key].append(measure_cli(project, tmp, n, where, warm))
                settle(client)
                r = results[key][-1]
                opts["log"](
                    f"  (d) {key} run {i + 1}: submit->first {r['submit_to_first']:.3f} s, "
                    f"last->final {r['last_to_final']:.3f} s (CLI returned {r['cli_returned']:.2f} s)"
                )
    return _rows(results)


def _rows(results: dict[str, list[dict]]) -> list[Row]:
    rows: list[Row] = []
    labels = {
        "inproc": "in-process driver (cluster=client)",
        "cli": "CLI submit (detached, cold: new runner + cluster)",
        "cli-warm": "CLI submit (detached, warm runner: keep-alive)",
        "cli-address": "CLI submit --cluster tcp://… (new runner)",
    }
    for key, runs in results.items():
        if not runs:
            continue
        for metric, case in (
            ("submit_to_first", "submit -> first batch running"),
            ("last_to_final", "last batch done -> final status"),
        ):
            stat = Stat([r[metric] for r in runs])
            rows.append(
                Row(
                    "d",
                    case,
                    labels[key],
                    "s",
                    stat,
                    target="<=1 s",
                    verdict=verdict(stat.median <= 1.0),
                )
            )
        extra = [("submit_to_driver_start", "submit -> driver started (start_time)")]
        if key.startswith("cli"):
            extra[:0] = [("cli_returned", "submit -> CLI returned")]
            if key != "cli-warm":  # a warm runner starts nothing: 'enqueuing' is too brief to poll
                extra.insert(1, ("runner_up", "submit -> runner wrote 'enqueuing'"))
            started = "cluster up, driver started" if key == "cli" else "driver started"
            extra[-1] = ("submit_to_driver_start", f"submit -> {started}")
        for metric, case in extra:
            rows.append(
                Row("d", case, labels[key], "s", Stat([r[metric] for r in runs]), verdict="info")
            )
    return rows


if __name__ == "__main__":  # pragma: no cover - run through run.py
    sys.exit(f"run benchmarks through {os.path.dirname(__file__)}/run.py")
