"""Run every benchmark, print the results table, write ``benchmarks/results.md``.

    .venv/bin/python benchmarks/run.py              # full run, ~5 min on 2 cores
    .venv/bin/python benchmarks/run.py --quick      # smaller sizes, 1 run each, < 1 min
    .venv/bin/python benchmarks/run.py --repeats 5 --only a,b

See ``benchmarks/README.md`` for what each benchmark measures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    HERE,
    WORKERS,
    format_table,
    loadavg,
    local_client,
    machine_info,
    package_state,
    workdir,
    write_project,
)

BENCHES = {
    "a": "throughput of no-op batches vs raw Dask and a process pool",
    "b": "parallel efficiency on 50 ms CPU batches",
    "c": "driver peak memory vs item_list size",
    "d": "latency: submit -> first batch, last batch -> final status",
}


def settings(args: argparse.Namespace) -> dict:
    """Sizes per benchmark: the issue's sizes, or small ones for ``--quick``."""
    reps = args.repeats or (1 if args.quick else 3)
    if args.quick:
        return {
            "a": {"sizes": [(1000, reps)], "repeats": reps},
            "b": {"n": 40, "seconds": 0.05, "repeats": reps},
            "c": {"sizes": (10**4, 10**5), "repeats": reps, "runner": False},
            "d": {"repeats": reps, "cli_repeats": 1},
        }
    # raw Dask needs ~100 s for 20,000 tasks here, and the memory runs ~10 s each: by default
    # those are run once so that a full run stays near 5 minutes; --thorough repeats them too
    raw_20k = args.raw_20k_repeats or (reps if args.thorough else 1)
    return {
        "a": {"sizes": [(5000, reps), (20000, raw_20k)], "repeats": reps},
        "b": {"n": 200, "seconds": 0.05, "repeats": reps},
        "c": {
            "sizes": (10**5, 10**7),
            "repeats": reps,
            "runner": True,
            "extra_repeats": reps if args.thorough else 1,
        },
        "d": {"repeats": reps, "cli_repeats": reps},
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    chosen = [b for b in args.only.split(",") if b] if args.only else list(BENCHES)
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; choose from {sorted(BENCHES)}")
        return 2
    conf = settings(args)
    overrides = _apply_overrides(args.set or [])
    info = machine_info()
    if overrides:
        info["dask config overrides (--set)"] = ", ".join(
            f"{k}={v!r}" for k, v in overrides.items()
        )
    started = time.time()
    rows, notes = [], {}
    with workdir() as tmp, local_client(WORKERS) as client:
        import dask_batchapi as batchapi

        store = tmp / "store"
        bc = batchapi.client(store=str(store), cluster=client)

        def api_factory(name: str, handler: str):
            return bc.deploy(write_project(tmp / name, name, handler))

        for key in chosen:
            opts = {**conf[key], "log": log, "store": store}
            log(f"({key}) {BENCHES[key]} — load average {loadavg()}")
            t0 = time.time()
            module = __import__(_MODULES[key])
            rows += module.run(client, api_factory, opts)
            notes[key] = {"seconds": time.time() - t0, "load": loadavg(), "opts": opts}
    table = format_table(rows)
    print(table)
    out = (
        Path(args.out) if args.out else HERE / ("results-quick.md" if args.quick else "results.md")
    )
    report = _report(info, conf, chosen, table, notes, time.time() - started, args)
    out.write_text(report + _foreign_sections(out))
    log(f"wrote {out} ({time.time() - started:.0f} s in all)")
    return 0


_MODULES = {
    "a": "bench_throughput",
    "b": "bench_efficiency",
    "c": "bench_memory",
    "d": "bench_latency",
}


_OWN_SECTIONS = ("## Machine", "## Results", "## Per benchmark")


def _foreign_sections(path: Path) -> str:
    """Sections other scripts added to the report (e.g. bench_ingest.py's), kept on a rerun."""
    if not path.exists():
        return ""
    kept, keep = [], False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keep = not line.startswith(_OWN_SECTIONS)
        if keep:
            kept.append(line)
    return ("\n" + "\n".join(kept) + "\n") if kept else ""


def _apply_overrides(pairs: list[str]) -> dict:
    """``--set key=value``: dask config for this process and, through the environment, for
    every process it starts (CLI, detached runners, memory children, workers)."""
    import os

    import dask
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    for key, value in overrides.items():
        env = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
        os.environ[env] = str(value)  # dask reads it back with ast.literal_eval
    dask.config.set(overrides)
    return overrides


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    parser.add_argument("--repeats", type=int, help="runs per measurement (default 3; quick 1)")
    parser.add_argument("--only", help="comma-separated subset of a,b,c,d")
    parser.add_argument(
        "--raw-20k-repeats",
        type=int,
        help="runs of raw Dask at 20,000 batches (default 1; ~100 s each on 2 cores)",
    )
    parser.add_argument(
        "--thorough",
        action="store_true",
        help="repeat the slow extras too (raw Dask at 20,000, all memory modes): ~10 min",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a dask config override for the run, e.g. batchapi.chunk-target-seconds=0.5",
    )
    parser.add_argument("--out", help="where to write the report (default benchmarks/results.md)")
    return parser.parse_args(argv)


def _report(info, conf, chosen, table, notes, seconds, args) -> str:
    lines = ["# dask-batchapi benchmarks", ""]
    lines.append(f"Command: `.venv/bin/python benchmarks/run.py {' '.join(sys.argv[1:])}`")
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    end_state = package_state()
    lines.append(f"- package sources at end: {end_state}")
    if end_state != info["package sources at start"]:
        lines.append(
            "- **warning: the package changed during this run; its numbers mix two versions**"
        )
    lines += [
        f"- benchmark cluster: LocalCluster, {WORKERS} worker processes x 1 thread; "
        "the process pool has the same 2 processes",
        f"- total time: {seconds:.0f} s",
        "",
        "## Results",
        "",
        "Each cell is the median of the runs, [min–max], and the number of runs (n). "
        "Ratios compare medians.",
        "",
        table,
        "",
        "## Per benchmark",
        "",
    ]
    for key in chosen:
        note = notes[key]
        opts = {k: v for k, v in note["opts"].items() if k not in ("log", "store", "phases")}
        lines.append(
            f"- ({key}) {BENCHES[key]}: {note['seconds']:.0f} s, settings {opts}, "
            f"load average after {note['load']}"
        )
        for label, by_size in note["opts"].get("phases", {}).items():
            for n, phases in by_size.items():
                if phases:
                    steps = ", ".join(f"{k} {v:.0f}" for k, v in phases.items())
                    lines.append(f"  - {label}, {n:,} items — peak RSS MB after: {steps}")
    lines += ["", "See `benchmarks/README.md` for method and `FINDINGS.md` for analysis.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
