"""Delimited-file ingestion (issue 3): dask-batchapi vs a raw s3fs read + JSON parse, and the
driver's peak RSS at 10^5 vs 10^7 values.

    .venv/bin/python benchmarks/bench_ingest.py [--repeats 3] [--values 1000000] [--big 10000000]

(1) Throughput: a moto S3 server on 127.0.0.1; files of JSON lines uploaded once; the same
    files read three ways in the same run, medians of ``--repeats``:
    * raw, 1 process: s3fs ``cat_file`` + ``json.loads`` per line, file after file;
    * raw, 2 processes: the same split over a ``ProcessPoolExecutor(2)`` (the cluster's size);
    * dask-batchapi: a ``delimited_files`` job (no-op handler, batch_size 1000) on a
      LocalCluster of 2 worker processes, driver in this process (``cluster=client``),
      timed from submit to the final status.
(2) Memory: the detached runner (``dask-batchapi submit``: driver + scheduler) of a
    ``delimited_files`` job over local files holding 10^5 and then 10^7 values; its peak RSS
    (VmHWM) sampled until it exits.
Results are appended to ``benchmarks/results.md`` under "Ingestion".
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
HANDLER = """
class Handler:
    def handle_batch(self, payload):
        pass
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(200):
        try:
            urllib.request.urlopen(endpoint)
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return proc, endpoint


def _lines(first: int, count: int) -> bytes:
    return "".join(
        f'{{"i": {i}, "text": "item number {i}"}}\n' for i in range(first, first + count)
    ).encode()


def upload(bucket: str, files: int, per_file: int) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    keys = [f"data/part-{n:05d}.jsonl" for n in range(files)]
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda n: s3.put_object(
                    Bucket=bucket, Key=keys[n], Body=_lines(n * per_file, per_file)
                ),
                range(files),
            )
        )
    return [f"s3://{bucket}/{k}" for k in keys]


def _read_parse(urls: list[str]) -> int:
    import s3fs

    fs = s3fs.S3FileSystem()
    count = 0
    for url in urls:
        for line in fs.cat_file(url).splitlines():
            if line.strip():
                json.loads(line)
                count += 1
    return count


def raw_one_process(urls: list[str]) -> float:
    t0 = time.perf_counter()
    _read_parse(urls)
    return time.perf_counter() - t0


def raw_two_processes(urls: list[str]) -> float:
    halves = [urls[0::2], urls[1::2]]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_read_parse, [urls[:1], urls[1:2]]))  # warm the processes
        t0 = time.perf_counter()
        list(pool.map(_read_parse, halves))
        return time.perf_counter() - t0


def project(tmp: Path) -> Path:
    root = tmp / "noop"
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.py").write_text(HANDLER)
    (root / "batchapi.yaml").write_text(
        textwrap.dedent("""
        name: noop
        kind: BatchAPI
        handler: {type: python, path: handler.py}
    """)
    )
    return root


def batchapi_run(client, tmp: Path, prefix: str, batch_size: int = 1000) -> float:
    import dask_batchapi as batchapi

    c = batchapi.client(store=str(tmp / f"store-{time.time_ns()}"), cluster=client)
    api = c.deploy(project(tmp))
    t0 = time.perf_counter()
    job = api.submit(
        {"workers": 2, "delimited_files": {"s3_paths": [prefix], "batch_size": batch_size}}
    )
    status = job.wait()
    elapsed = time.perf_counter() - t0
    assert status == "succeeded", job.status
    return elapsed


def throughput(repeats: int, values: int, files: int) -> list[dict]:
    from distributed import Client, LocalCluster

    moto, _ = start_moto()
    rows = []
    try:
        per_file = values // files
        urls = upload("ingest", files, per_file)
        total = per_file * files
        with (
            tempfile.TemporaryDirectory() as d,
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            times: dict[str, list[float]] = {
                "raw, 1 process": [],
                "raw, 2 processes": [],
                "dask-batchapi (2 workers)": [],
            }
            for _ in range(repeats):
                times["raw, 1 process"].append(raw_one_process(urls))
                times["raw, 2 processes"].append(raw_two_processes(urls))
                times["dask-batchapi (2 workers)"].append(
                    batchapi_run(client, Path(d), "s3://ingest/data/part-")
                )
        for name, ts in times.items():
            rows.append(
                {
                    "system": name,
                    "items/s": total / statistics.median(ts),
                    "min": total / max(ts),
                    "max": total / min(ts),
                    "n": len(ts),
                }
            )
    finally:
        moto.terminate()
    return rows


def _write_local(root: Path, values: int, files: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    per_file = values // files
    for n in range(files):
        (root / f"part-{n:05d}.jsonl").write_bytes(_lines(n * per_file, per_file))


def _peak_rss_of_runner(tmp: Path, data: Path, store: Path) -> float:
    # the runner exits with its job (not kept warm), so its peak is the job's
    env = {**os.environ, "DASK_BATCHAPI_STORE": str(store), "DASK_BATCHAPI__KEEP_ALIVE": "0"}
    cli = [PY, "-m", "dask_batchapi.api.cli"]
    subprocess.run([*cli, "deploy", str(project(tmp))], env=env, check=True, capture_output=True)
    sub = tmp / f"sub-{data.name}.json"
    sub.write_text(
        json.dumps(
            {
                "workers": 2,
                "delimited_files": {"s3_paths": [str(data) + "/part-"], "batch_size": 1000},
            }
        )
    )
    out = subprocess.run(
        [*cli, "submit", "noop", str(sub)], env=env, check=True, capture_output=True, text=True
    )
    job_id = out.stdout.split()[0]
    state = store / "jobs" / "noop" / job_id / "state.json"
    pid, peak = None, 0.0
    while True:
        if pid is None and state.exists():
            pid = (json.loads(state.read_text()).get("driver") or {}).get("pid")
        if pid is not None:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) / 1024)
            except FileNotFoundError:
                break
        time.sleep(0.1)
    final = json.loads(state.read_text())
    assert final["status"] == "succeeded", final
    return peak


def memory(small: int, big: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for values in (small, big):
            data = tmp / f"values-{values}"
            _write_local(data, values, files=100)
            rows.append(
                {
                    "values": values,
                    "runner peak RSS MB": _peak_rss_of_runner(tmp, data, tmp / "store"),
                }
            )
            for p in data.iterdir():
                p.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=10_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load = os.getloadavg()
    tput = throughput(args.repeats, args.values, args.files)
    mem = memory(args.small, args.big)
    raw1 = next(r for r in tput if r["system"] == "raw, 1 process")["items/s"]
    raw2 = next(r for r in tput if r["system"] == "raw, 2 processes")["items/s"]
    lines = [
        "",
        "## Ingestion (delimited files; `benchmarks/bench_ingest.py`)",
        "",
        f"Run {started}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{args.values:,} JSON values in {args.files} files on moto's S3 server (loopback); "
        f"medians of {args.repeats} runs.",
        "",
        "| system | items/s median [min–max] | vs raw 1 process | vs raw 2 processes |",
        "|---|---|---|---|",
    ]
    for r in tput:
        lines.append(
            f"| {r['system']} | {r['items/s']:,.0f} [{r['min']:,.0f}–{r['max']:,.0f}] "
            f"(n={r['n']}) | {r['items/s'] / raw1:.2f}x | {r['items/s'] / raw2:.2f}x |"
        )
    lines += [
        "",
        "| delimited values (local files, 100 files) | runner peak RSS (driver + scheduler) |",
        "|---|---|",
    ]
    for r in mem:
        lines.append(f"| {r['values']:,} | {r['runner peak RSS MB']:.0f} MB |")
    growth = mem[-1]["runner peak RSS MB"] - mem[0]["runner peak RSS MB"]
    lines.append(f"| growth | {growth:+.0f} MB (target: within 50 MB) |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with open(HERE / "results.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
