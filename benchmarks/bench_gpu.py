"""GPU inference throughput: a bare torch loop vs dask-batchapi vs raw Dask, in one process.

The model is torchvision's ResNet-50 with random weights (no download), bf16, channels-last,
eval, under ``torch.inference_mode()``. The images are a pool of random uint8 images
(N x 3 x 224 x 224, fixed seed) pinned in host memory; every batch is a contiguous slice of
the pool, copied to the GPU with ``non_blocking=True``, converted to bf16 channels-last,
normalised (/255, ImageNet mean and std), run through the model, and synchronised.
The same source (``MODEL_CODE``) runs in all three systems:

* bare loop: in this process, one ``Runner.run`` per batch.
* dask-batchapi: a generated project (``batchapi.yaml`` with ``compute: {gpu: 1}``) whose
  ``Handler.__init__(config, job_spec)`` builds the Runner and whose
  ``handle_batch(payload, batch_id)`` runs one batch (payload = the batch's image indices);
  the job's driver runs on a thread of this process (``batchapi.client(cluster=client)``).
* raw Dask: a WorkerPlugin builds the Runner; one ``client.submit`` per batch, then gather.

Both Dask systems use one ``LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
resources={"GPU": 1})``. Each batch's start and end (``time.perf_counter``, in the process that
ran it) are recorded; the headline figure is the steady-state rate

    images of batches k..n-1 / (end of batch n-1 - end of batch k-1)

(k = ``--skip``), so it counts every gap between batches (dispatch, scheduling, the driver)
and nothing before the first batches (cluster start, handler init). The end-to-end rate
(submit -> final status for dask-batchapi, which includes building the handler; first submit
-> gather for raw Dask, whose plugin was registered beforehand) is reported beside it.

    python benchmarks/bench_gpu.py                       # cuda if available: the issue's sizes
    python benchmarks/bench_gpu.py --smoke --device cpu  # CPU check of every code path, ~1 min
    bash benchmarks/gpu/run_on_device.sh                 # on the lent GPU machine (offline)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Targets of the performance issue: dask-batchapi's steady-state rate over the bare loop's.
TARGETS = {256: 0.97, 32: 0.85}
# What the issue measured for raw Dask on an H200, for reference.
ISSUE_RAW = {256: 0.93, 32: 0.50}

# -- the model and the images: one source for the bare loop, the handler and the plugin ------
MODEL_CODE = '''
import time

import torch
import torchvision

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Runner:
    """A torchvision classifier with random weights and a pinned pool of uint8 images."""

    def __init__(self, arch="resnet50", image_size=224, pool_size=512, dtype="bfloat16",
                 device="cuda", seed=0, warmup_sizes=(), warmup_batches=3, cpu_threads=0):
        if cpu_threads:
            torch.set_num_threads(int(cpu_threads))
        torch.backends.cudnn.benchmark = True
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.dtype = getattr(torch, dtype)
        torch.manual_seed(seed)
        model = getattr(torchvision.models, arch)(weights=None)
        model = model.to(self.device, memory_format=torch.channels_last)
        self.model = model.to(self.dtype).eval()
        gen = torch.Generator().manual_seed(seed)
        pool = torch.randint(0, 256, (pool_size, 3, image_size, image_size),
                             dtype=torch.uint8, generator=gen)
        self.pool = pool.pin_memory() if self.cuda else pool
        self.pinned = bool(self.pool.is_pinned()) if self.cuda else False
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(MEAN, device=self.device, dtype=self.dtype).view(shape)
        self.std = torch.tensor(STD, device=self.device, dtype=self.dtype).view(shape)
        self.times = []  # (start, end) of every recorded batch, time.perf_counter()
        for size in warmup_sizes:
            for _ in range(int(warmup_batches)):
                self.run(0, int(size), record=False)

    def run(self, start, count, record=True):
        """One batch: images start..start+count-1 of the pool (a contiguous, pinned slice)."""
        t0 = time.perf_counter()
        if start < 0 or start + count > self.pool.shape[0]:
            raise IndexError(f"images {start}..{start + count - 1} outside the pool")
        with torch.inference_mode():
            x = self.pool[start:start + count].to(self.device, non_blocking=True)
            x = x.to(dtype=self.dtype, memory_format=torch.channels_last)
            x = x.mul_(1.0 / 255).sub_(self.mean).div_(self.std)
            self.model(x)
            if self.cuda:
                torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        if record:
            self.times.append((t0, t1))
        return count
'''

HANDLER_CODE = """
import json
import os

from gpu_model import Runner


class Handler:
    def __init__(self, config, job_spec):
        self.runner = Runner(**config["runner"])
        self.probe = config["probe"]

    def handle_batch(self, payload, batch_id):
        start, count = payload[0], len(payload)
        if payload[-1] != start + count - 1:
            raise ValueError(f"payload is not a contiguous range of image indices: {payload[:4]}")
        self.runner.run(start, count)

    def on_job_complete(self):
        with open(self.probe, "w") as f:
            json.dump({"pid": os.getpid(), "times": self.runner.times}, f)
"""


def load_model_module():
    module = types.ModuleType("gpu_model")
    exec(compile(MODEL_CODE, "gpu_model.py", "exec"), module.__dict__)
    return module


# -- raw Dask: a WorkerPlugin builds the model, one task per batch ----------------------------
PLUGIN_NAME = "bench-gpu-model"

try:  # the Dask stack may be missing where only --help or the bare loop runs
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object


class ModelPlugin(WorkerPlugin):
    name = PLUGIN_NAME

    def __init__(self, code: str, runner_kwargs: dict):
        self.code = code
        self.runner_kwargs = runner_kwargs

    def setup(self, worker):
        module = types.ModuleType("gpu_model_raw")
        exec(compile(self.code, "gpu_model.py", "exec"), module.__dict__)
        self.runner = module.Runner(**self.runner_kwargs)


def raw_batch(start: int, count: int) -> int:
    from distributed import get_worker

    return get_worker().plugins[PLUGIN_NAME].runner.run(start, count)


def raw_times(reset: bool = False, dask_worker=None) -> list:
    runner = dask_worker.plugins[PLUGIN_NAME].runner
    times = list(runner.times)
    if reset:
        runner.times.clear()
    return times


# -- measurements ----------------------------------------------------------------------------
def window_rate(times: list, counts: list[int] | int, skip: int) -> dict:
    """Steady-state images/s from per-batch (start, end) times, and the gaps between batches."""
    times = sorted((float(a), float(b)) for a, b in times)
    n = len(times)
    if isinstance(counts, int):
        counts = [counts] * n
    k = min(max(skip, 1), n - 1) if n > 1 else 0
    if n < 2:
        span, images = times[0][1] - times[0][0], counts[0]
    else:
        span, images = times[-1][1] - times[k - 1][1], sum(counts[k:])
    busy = sum(b - a for a, b in times[k:])
    gaps = [times[i][0] - times[i - 1][1] for i in range(max(k, 1), n)]
    return {
        "rate": images / span,
        "busy_share": busy / span if span > 0 else float("nan"),
        "gap_ms": 1e3 * statistics.mean(gaps) if gaps else 0.0,
        "batch_ms": 1e3 * statistics.median(b - a for a, b in times[k:]),
        "batches": n,
    }


def batches_for(n: int, size: int, pool: int) -> list[tuple[int, int]]:
    """(start, count) of n batches walking through the pool (pool % size == 0: no wrap)."""
    per_pool = pool // size
    return [((i % per_pool) * size, size) for i in range(n)]


def measure_bare(runner, size: int, n: int, skip: int) -> dict:
    runner.times.clear()
    for start, count in batches_for(n, size, runner.pool.shape[0]):
        runner.run(start, count)
    out = window_rate(runner.times, size, skip)
    out["e2e_rate"] = n * size / (runner.times[-1][1] - runner.times[0][0])
    return out


def measure_batchapi(
    api, runner_kwargs: dict, size: int, n: int, skip: int, probe_dir: Path, timeout: float
) -> dict:
    pool = runner_kwargs["pool_size"]
    items = [s + j for s, c in batches_for(n, size, pool) for j in range(c)]
    probe = probe_dir / f"batchapi-{size}-{time.monotonic_ns()}.json"
    config = {"runner": {**runner_kwargs, "warmup_sizes": [size]}, "probe": str(probe)}
    submission = {"workers": 1, "item_list": {"items": items, "batch_size": size}, "config": config}
    start = time.perf_counter()
    job = api.submit(submission)
    driver = getattr(job, "_driver", None)
    if isinstance(driver, threading.Thread):
        driver.join(timeout)
        if driver.is_alive():
            raise RuntimeError(f"dask-batchapi job {job.job_id} still running after {timeout} s")
    else:  # the package changed how it hosts the driver: fall back to the public API
        job.wait(timeout=timeout, poll=0.01)
    seconds = time.perf_counter() - start
    status = job.status["job_status"]["status"]
    if status != "succeeded" or not probe.exists():
        logs = "\n".join(str(line) for line in job.logs()[-20:])
        raise RuntimeError(f"dask-batchapi job {job.job_id} ended {status}; last logs:\n{logs}")
    times = json.loads(probe.read_text())["times"]
    if len(times) != n:
        raise RuntimeError(f"dask-batchapi ran {len(times)} batches, expected {n}")
    out = window_rate(times, size, skip)
    out["e2e_rate"] = n * size / seconds
    return out


def measure_raw(client, size: int, n: int, skip: int, pool: int, resources: dict) -> dict:
    client.run(raw_times, True)  # clear
    start = time.perf_counter()
    futures = [
        client.submit(raw_batch, s, c, pure=False, resources=resources)
        for s, c in batches_for(n, size, pool)
    ]
    client.gather(futures)
    seconds = time.perf_counter() - start
    del futures
    (times,) = client.run(raw_times, True).values()
    out = window_rate(times, size, skip)
    out["e2e_rate"] = n * size / seconds
    return out


# -- the run ---------------------------------------------------------------------------------
def settings(args) -> dict:
    smoke = args.smoke
    device = args.device or default_device()
    return {
        "device": device,
        "arch": args.arch or ("resnet18" if smoke else "resnet50"),
        "image_size": args.image_size or (64 if smoke else 224),
        "dtype": args.dtype or ("float32" if smoke or device == "cpu" else "bfloat16"),
        "sizes": [int(s) for s in (args.sizes or ("8,2" if smoke else "256,32")).split(",")],
        "batches": [int(b) for b in (args.batches or ("12,24" if smoke else "40,200")).split(",")],
        "repeats": args.repeats or (1 if smoke else 3),
        "skip": args.skip if args.skip is not None else (1 if smoke else 2),
        "seed": args.seed,
        "cpu_threads": 1 if device == "cpu" else 0,
        "job_timeout": args.job_timeout,
    }


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    conf = settings(args)
    sizes, batches = conf["sizes"], conf["batches"]
    if len(batches) != len(sizes):
        raise SystemExit("--batches needs one number per batch size")
    pool = args.pool or lcm_multiple(sizes, 512 if not args.smoke else 64)
    if any(pool % s for s in sizes):
        raise SystemExit(f"--pool {pool} must be a multiple of every batch size {sizes}")
    runner_kwargs = {
        "arch": conf["arch"],
        "image_size": conf["image_size"],
        "pool_size": pool,
        "dtype": conf["dtype"],
        "device": conf["device"],
        "seed": conf["seed"],
        "cpu_threads": conf["cpu_threads"],
        "warmup_batches": args.warmup,
    }
    conf["pool_size"] = pool
    log(f"settings: {conf}")

    import logging

    import torch
    from distributed import Client, LocalCluster

    import dask_batchapi as batchapi

    info = environment(conf["device"])
    log(f"environment: {info}")
    if conf["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")

    t0 = time.time()
    model = load_model_module()
    bare = model.Runner(**runner_kwargs, warmup_sizes=sizes)
    if conf["device"] == "cuda":
        info["pool pinned"] = str(bare.pinned)
    log(f"bare runner ready ({time.time() - t0:.1f} s)")

    logging.getLogger("distributed").setLevel(logging.ERROR)
    resources = {"GPU": 1}
    results: dict[int, dict[str, list[dict]]] = {
        s: {"bare": [], "batchapi": [], "raw": []} for s in sizes
    }
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            resources=resources,
            dashboard_address=None,
        )
        client = Client(cluster, set_as_default=False)
        try:
            client.wait_for_workers(1)
            project = write_project(tmp / "project")
            bc = batchapi.client(store=str(tmp / "store"), cluster=client)
            api = bc.deploy(project)
            probes = tmp / "probes"
            probes.mkdir()
            # warm: torch import and CUDA context in the worker, first-job imports in the driver
            t0 = time.time()
            measure_batchapi(
                api,
                runner_kwargs,
                sizes[0],
                max(4, conf["skip"] + 2),
                conf["skip"],
                probes,
                conf["job_timeout"],
            )
            log(f"warm-up job done ({time.time() - t0:.1f} s)")
            t0 = time.time()
            client.register_plugin(
                ModelPlugin(MODEL_CODE, {**runner_kwargs, "warmup_sizes": sizes})
            )
            log(f"raw Dask plugin ready ({time.time() - t0:.1f} s)")
            for size, n in zip(sizes, batches, strict=True):
                for rep in range(conf["repeats"]):
                    # interleaved, so drift (clocks, other load) hits all three alike
                    r = results[size]
                    r["bare"].append(measure_bare(bare, size, n, conf["skip"]))
                    r["batchapi"].append(
                        measure_batchapi(
                            api, runner_kwargs, size, n, conf["skip"], probes, conf["job_timeout"]
                        )
                    )
                    r["raw"].append(measure_raw(client, size, n, conf["skip"], pool, resources))
                    log(
                        f"batch {size} run {rep + 1}: "
                        + ", ".join(
                            f"{k} {v[-1]['rate']:.0f} img/s (e2e {v[-1]['e2e_rate']:.0f})"
                            for k, v in r.items()
                        )
                    )
        finally:
            client.close()
            cluster.close()

    summary = summarize(results, sizes, batches)
    table = markdown(info, conf, summary)
    print(table)
    doc = {
        "environment": info,
        "settings": conf,
        "summary": summary,
        "runs": {str(s): v for s, v in results.items()},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
        log(f"wrote {args.json}")
    if args.md:
        Path(args.md).write_text(table + "\n")
        log(f"wrote {args.md}")
    return 0


def lcm_multiple(sizes: list[int], at_least: int) -> int:
    """The smallest multiple of every batch size that is >= at_least (batches never wrap)."""
    import math

    step = math.lcm(*sizes)
    return step * max(1, -(-at_least // step))


def write_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "gpu_model.py").write_text(MODEL_CODE.lstrip())
    (root / "handler.py").write_text(textwrap.dedent(HANDLER_CODE).lstrip())
    (root / "batchapi.yaml").write_text(
        "name: bench-gpu\nkind: BatchAPI\nhandler:\n  type: python\n  path: handler.py\n"
        "compute:\n  gpu: 1\n"
    )
    return root


def summarize(results: dict, sizes: list[int], batches: list[int]) -> list[dict]:
    rows = []
    for size, n in zip(sizes, batches, strict=True):
        bare = statistics.median(m["rate"] for m in results[size]["bare"])
        bare_e2e = statistics.median(m["e2e_rate"] for m in results[size]["bare"])
        for system in ("bare", "batchapi", "raw"):
            ms = results[size][system]
            rate = statistics.median(m["rate"] for m in ms)
            e2e = statistics.median(m["e2e_rate"] for m in ms)
            rows.append(
                {
                    "batch_size": size,
                    "batches": n,
                    "system": system,
                    "rate": rate,
                    "rate_min": min(m["rate"] for m in ms),
                    "rate_max": max(m["rate"] for m in ms),
                    "n": len(ms),
                    "ratio": rate / bare,
                    "e2e_rate": e2e,
                    "e2e_ratio": e2e / bare_e2e,
                    "busy_share": statistics.median(m["busy_share"] for m in ms),
                    "gap_ms": statistics.median(m["gap_ms"] for m in ms),
                    "batch_ms": statistics.median(m["batch_ms"] for m in ms),
                    "target": TARGETS.get(size) if system == "batchapi" else None,
                }
            )
    return rows


NAMES = {
    "bare": "bare torch loop",
    "batchapi": "dask-batchapi Handler",
    "raw": "raw Dask (WorkerPlugin, 1 task/batch)",
}


def markdown(info: dict, conf: dict, summary: list[dict]) -> str:
    lines = [
        f"GPU: **{info['device name']}**; torch {info['torch']}, torchvision "
        f"{info['torchvision']}, Python {info['python']}, dask {info['dask']}, "
        f"distributed {info['distributed']}, dask-batchapi {info['dask-batchapi']} "
        f"({info['dask-batchapi sources']}); {info['date (UTC)']} UTC.",
        "",
        f"{conf['arch']}, random weights, {conf['dtype']}, channels-last, inference_mode; "
        f"{conf['image_size']}x{conf['image_size']} uint8 images from a pool of "
        f"{conf['pool_size']} in {'pinned ' if conf['device'] == 'cuda' else ''}host memory, "
        f"copied per batch; one LocalCluster worker process (1 thread, GPU=1). Rate: images/s "
        f"from the end of batch {conf['skip']} to the end of the last (median "
        f"[min–max] of {conf['repeats']}); e2e: submit -> done (dask-batchapi incl. handler "
        f"init; raw Dask plugin pre-built).",
        "",
        "| batch | batches | system | images/s | vs bare | e2e images/s | e2e vs bare "
        "| busy | gap ms | target | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        target = r["target"]
        verdict = "" if target is None else ("met" if r["ratio"] >= target else "SHORT")
        ref = ISSUE_RAW.get(r["batch_size"]) if r["system"] == "raw" else None
        lines.append(
            f"| {r['batch_size']} | {r['batches']} | {NAMES[r['system']]} "
            f"| {r['rate']:.0f} [{r['rate_min']:.0f}–{r['rate_max']:.0f}] (n={r['n']}) "
            f"| {r['ratio']:.3f}x | {r['e2e_rate']:.0f} | {r['e2e_ratio']:.3f}x "
            f"| {r['busy_share']:.0%} | {r['gap_ms']:.2f} "
            f"| {'' if target is None else f'>= {target}x'}"
            f"{f'(issue, H200: {ref}x)' if ref else ''} | {verdict} |"
        )
    return "\n".join(lines)


def environment(device: str) -> dict:
    import dask
    import distributed
    import torch
    import torchvision

    import dask_batchapi

    sys.path.insert(0, str(HERE))
    try:
        from _common import package_state

        sources = package_state()
    except Exception as exc:  # noqa: BLE001 - informational only
        sources = f"? ({exc})"
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({cpu_model()})"
    return {
        "device name": name,
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": str(torch.version.cuda),
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "dask-batchapi": getattr(dask_batchapi, "__version__", "?"),
        "dask-batchapi sources": sources,
        "dask-batchapi path": str(Path(dask_batchapi.__file__).parent),
        "cpu cores": str(os.cpu_count()),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CPU-sized: resnet18, 64x64, float32, batch sizes 8,2, few batches",
    )
    p.add_argument("--arch", help="torchvision model (default resnet50; smoke resnet18)")
    p.add_argument("--image-size", type=int, help="default 224 (smoke 64)")
    p.add_argument("--dtype", help="torch dtype (default bfloat16 on cuda, else float32)")
    p.add_argument("--sizes", help="batch sizes, comma-separated (default 256,32)")
    p.add_argument("--batches", help="timed batches per size (default 40,200)")
    p.add_argument("--repeats", type=int, help="runs per size, interleaved (default 3)")
    p.add_argument("--skip", type=int, help="leading batches left out of the rate (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up batches per size and runner")
    p.add_argument("--pool", type=int, help="images in the pool (a multiple of every size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--job-timeout", type=float, default=300.0)
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--md", help="write the markdown table here")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
