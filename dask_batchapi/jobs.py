"""Job mechanics shared by the Python API and the CLI: deploy, submit, run, stop, resume.

``submit`` validates everything first (nothing is written for a bad submission), writes the
job record (``pending``), then starts the job's driver: detached in its own process (the
default for ``local`` and scheduler addresses, so the job outlives the caller) or on a thread
of the caller when the cluster is a live ``Client`` object.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import config, service
from .errors import JobStateError, SubmissionError
from .ledger import read_dead_letter
from .project import check_handler, pack_project
from .spec import Submission, load_api_specs, submission_from_dict
from .status import JobState, JobStatus, is_interrupted, status_document, utcnow_iso
from .store import JobStore, StoredItems

logger = logging.getLogger(__name__)

_ID_SPAN = 16**11  # 11 hex digits of inverted milliseconds: ids sort newest first until 2527


def new_job_id(now: float | None = None) -> str:
    """A 16-hex-digit id; lexical order of ids is newest first."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{_ID_SPAN - 1 - millis:011x}{secrets.randbelow(16**5):05x}"


# -- deploy ---------------------------------------------------------------------------------
def deploy(store: JobStore, project_dir: str | os.PathLike) -> list[dict]:
    """Validate and store every API of a project directory; returns their records."""
    project = Path(project_dir).expanduser().resolve()
    specs = load_api_specs(project)
    records = []
    for spec in specs:
        signature = check_handler(project, spec.handler)
        archive = pack_project(project, spec.spec_file, config.get("project-max-bytes"))
        record = {
            "name": spec.name,
            "spec": spec.to_dict(),
            "signature": signature.to_dict(),
            "archive_sha256": archive.sha256,
            "files": list(archive.files),
            "project_dir": str(project),
            "deployed_time": utcnow_iso(),
        }
        store.put_api(record, archive.data)
        records.append(record)
    return records


# -- submit ---------------------------------------------------------------------------------
def build_record(
    api: dict, submission: Submission, cluster: Any, retry_of: str | None = None
) -> dict:
    """The immutable job record written at submit."""
    job_id = new_job_id()
    data = submission.to_dict()
    source_summary = {k: v for k, v in data[submission.source_kind].items() if k != "items"}
    if submission.source_kind == "item_list":
        # the items live in the store apart (JobStore.put_items), streamed by the driver
        source_summary["item_count"] = len(submission.source.items)
        data["item_list"] = dict(source_summary)
    record = {
        "job_id": job_id,
        "api_name": api["name"],
        "kind": "BatchAPI",
        "created_time": utcnow_iso(),
        "workers": submission.workers,
        "config": submission.config,
        "timeout": submission.timeout,
        "dead_letter": {"max_receive_count": submission.max_receive_count},
        "output": submission.output,
        "batch_timeout": submission.batch_timeout,
        "source": submission.source_kind,
        submission.source_kind: source_summary,
        "cluster": cluster if isinstance(cluster, str) else "client",
        "archive_sha256": api["archive_sha256"],
        "retry_of": retry_of,
        "submission": data,
    }
    if "sqs_dead_letter_queue" in data:
        record["sqs_dead_letter_queue"] = data["sqs_dead_letter_queue"]
    return record


def create_retry_job(store: JobStore, api_name: str, job_id: str, cluster: Any) -> dict:
    """A new job of only the dead-lettered batches of ``job_id`` (same batches, new ids)."""
    original = store.get_job(api_name, job_id)
    state = JobState.from_dict(store.read_state(api_name, job_id))
    if not state.job_status.is_terminal:
        raise JobStateError(
            f"job {job_id} is still {state.status}; retry its failed batches once it has ended"
        )
    dead = read_dead_letter(store, api_name, job_id)
    if not dead:
        raise JobStateError(f"job {job_id} has no failed batches to retry")
    api = store.get_api(api_name)
    submission = submission_of(original, store)
    record = build_record(api, submission, cluster, retry_of=job_id)
    record["retry_refs"] = [r["ref"] for r in dead]
    store.create_job(record)
    state = JobState(total_batch_count=len(dead))
    store.write_state(api_name, record["job_id"], state.to_dict())
    return record


def create_job(store: JobStore, api: dict, submission: Submission, cluster: Any, **kw: Any) -> dict:
    if submission.output and "://" not in submission.output:
        # a local output path means the submitter's directory, not the driver's or a worker's
        submission = replace(submission, output=os.path.abspath(submission.output))
    files = matched_files(submission) if submission.source_kind != "item_list" else None
    record = build_record(api, submission, cluster, **kw)
    if submission.source_kind == "item_list":
        store.put_items(record["api_name"], record["job_id"], submission.source.items)
    if files is not None:
        record[submission.source_kind]["file_count"] = len(files)
        store.put_listing(record["api_name"], record["job_id"], files)
    store.create_job(record)
    state = JobState(total_batch_count=known_total(submission, files))
    store.write_state(record["api_name"], record["job_id"], state.to_dict())
    return record


def with_workers(submission: Submission, workers: int | None) -> Submission:
    if workers is None:
        return submission
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SubmissionError(f"--workers must be an integer >= 1, got {workers!r}")
    return replace(submission, workers=workers)


# -- starting the driver --------------------------------------------------------------------
def launch_detached(store: JobStore, record: dict, cluster: str) -> int:
    """Start the job's driver in its own session; returns its pid. The caller may exit.

    On the embedded cluster or a scheduler address, a runner kept warm for jobs like this one
    takes it instead (:mod:`dask_batchapi.service`): no new process, no new cluster."""
    api_name, job_id = record["api_name"], record["job_id"]
    if service.serves(cluster):
        compute = store.get_api(api_name)["spec"].get("compute")
        key = service.service_key(cluster, int(record.get("workers") or 1), compute)
        pid = service.hand_off(key, store.url, api_name, job_id)
        if pid is not None:
            return pid
    log_dir = Path(tempfile.gettempdir()) / "dask-batchapi-runners"
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "dask_batchapi.runner",
        "--store",
        store.url,
        "--cluster",
        cluster,
        api_name,
        job_id,
    ]
    with open(log_dir / f"{job_id}.log", "ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own module
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def is_detachable(target: Any) -> bool:
    """Whether a job on ``target`` can be driven by a detached process (not a live object)."""
    return config.cluster_kind(target) != "object"


def check_cluster(target: Any, store_url: str | None = None, urls: Sequence[str] = ()) -> None:
    """Reject a cluster target that cannot work, before anything is written (one line).

    ``urls``: the job's inputs and output; on Kubernetes they, and the store, must be shared.
    """
    kind = config.cluster_kind(target)
    if kind == "kubernetes":
        from .kubernetes import check_submit

        check_submit(store_url or config.store_url(), urls)
    if kind != "address" or (
        service.serves(target) and service.answers(service.service_key(target))
    ):
        return  # a warm runner holds a live connection to that scheduler
    from .cluster import check_address

    check_address(target)  # a Dask handshake, TLS included: a missing certificate fails here


def data_urls(submission: Submission) -> list[str]:
    """The job's input prefixes and output location."""
    urls = list(getattr(submission.source, "s3_paths", None) or ())
    return urls + ([submission.output] if submission.output else [])


def known_total(submission: Submission, files: list[str] | None) -> int | None:
    """The batch count when it is known before reading any data."""
    kind = submission.source_kind
    if kind == "item_list":
        return math.ceil(len(submission.source.items) / submission.source.batch_size)
    if kind == "file_path_lister" and files is not None:
        return math.ceil(len(files) / submission.source.batch_size)
    return None


def launch_in_thread(store: JobStore, api_name: str, job_id: str, cluster: Any) -> threading.Thread:
    from .runner import run_job

    thread = threading.Thread(
        target=run_job,
        args=(store, api_name, job_id, cluster),
        name=f"batchapi-driver-{job_id}",
        daemon=True,
    )
    thread.start()
    return thread


def start_job(store: JobStore, record: dict, cluster: Any) -> Any:
    """Start the driver of a job record, detached when the cluster allows it."""
    api_name, job_id = record["api_name"], record["job_id"]
    if not is_detachable(cluster):
        return launch_in_thread(store, api_name, job_id, cluster)
    target = config.cluster_target(cluster)
    if target == "kubernetes":  # the driver runs in a pod: the job outlives this machine
        from .kubernetes import launch_driver

        return launch_driver(store.url, api_name, job_id)
    return launch_detached(store, record, target)


def submission_of(record: dict, store: JobStore) -> Submission:
    """The parsed submission stored in a job record; an item_list's items stream from
    ``store`` (records written before items were stored apart still hold them inline)."""
    data = record["submission"]
    source = data.get("item_list")
    if source is None or "items" in source:
        return submission_from_dict(data)
    placeholder = {"items": [None], "batch_size": source["batch_size"]}
    parsed = submission_from_dict({**data, "item_list": placeholder})
    items = StoredItems(store, record["api_name"], record["job_id"], int(source["item_count"]))
    return replace(parsed, source=replace(parsed.source, items=items))


def job_spec_for(record: dict, state: JobState) -> dict:
    """What ``Handler.__init__`` receives as ``job_spec`` (Cortex's fields and the record's)."""
    spec = {k: v for k, v in record.items() if k not in ("submission", "retry_refs")}
    spec.update(
        total_batch_count=state.total_batch_count, start_time=state.start_time or utcnow_iso()
    )
    return spec


# -- reading and controlling ----------------------------------------------------------------
def job_status(store: JobStore, api_name: str, job_id: str, api_spec: dict | None = None) -> dict:
    """The job's status document (``api_spec``: the API's spec, when the caller has it)."""
    record = store.get_job(api_name, job_id)
    state = read_state(store, api_name, job_id)
    if api_spec is None:
        api_spec = store.get_api(api_name)["spec"]
    return status_document(
        record,
        state,
        api_spec,
        now=time.time(),
        heartbeat_timeout=float(config.get("heartbeat-timeout")),
        driver_dead=driver_alive(state) is False,
        start_timeout=_start_timeout(record),
    )


def _start_timeout(record: dict) -> float:
    """How long a job may wait for its driver's first heartbeat (a pod must be scheduled)."""
    if record.get("cluster") == "kubernetes":
        return float(config.get("kubernetes.driver.start-timeout"))
    return 0.0


def stop_job(store: JobStore, api_name: str, job_id: str) -> None:
    store.get_job(api_name, job_id)
    store.request_stop(api_name, job_id)


def read_state(store: JobStore, api_name: str, job_id: str) -> JobState:
    """The job's state, its heartbeat the latest of the driver loop's and the process's."""
    state = JobState.from_dict(store.read_state(api_name, job_id))
    pulse = store.read_pulse(api_name, job_id)
    if pulse is not None and (state.heartbeat is None or pulse > state.heartbeat):
        state.heartbeat = pulse
    return state


def prepare_resume(store: JobStore, api_name: str, job_id: str) -> dict:
    """Check that a job can be resumed (its driver is dead, it did not succeed)."""
    record = store.get_job(api_name, job_id)
    state = read_state(store, api_name, job_id)
    if state.job_status is JobStatus.SUCCEEDED:
        raise JobStateError(f"job {job_id} already succeeded; nothing to resume")
    if not state.job_status.is_terminal:
        _refuse_if_driver_alive(record, state)
    store.clear_stop(api_name, job_id)
    # pending again until the new driver is up, so nobody reads the old end or the dead pid
    state.move_to(JobStatus.PENDING)
    state.driver, state.heartbeat = {}, time.time()
    state.end_time, state.error = None, None
    store.write_state(api_name, job_id, state.to_dict())
    return record


def _refuse_if_driver_alive(record: dict, state: JobState) -> None:
    """Never two drivers for one job: a driver process alive on this host wins over any
    heartbeat; elsewhere, a fresh heartbeat means alive."""
    job_id = record["job_id"]
    alive = driver_alive(state)
    stale = is_interrupted(record, state, time.time(), float(config.get("heartbeat-timeout")))
    if alive is True or (alive is None and not stale):
        raise JobStateError(
            f"job {job_id} is {state.status} and its driver is alive; stop it first or wait"
        )


def driver_alive(state: JobState) -> bool | None:
    """True/False when the driver ran on this host (its pid tells); None when it ran elsewhere."""
    import psutil

    driver = state.driver or {}
    if driver.get("host") != socket.gethostname() or not driver.get("pid"):
        return None
    try:
        proc = psutil.Process(driver["pid"])
        return proc.status() != psutil.STATUS_ZOMBIE and _is_our_driver(proc)
    except psutil.NoSuchProcess:
        return False


def _is_our_driver(proc) -> bool:
    """The pid may have been reused by an unrelated process since the driver died."""
    try:
        cmdline = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - no permission: assume it is
        return True
    return "dask_batchapi" in cmdline or "python" in cmdline or "ipykernel" in cmdline


def matched_files(submission: Submission) -> list[str]:
    """The input URLs a submission matches (empty for item_list); SourceError if none."""
    if submission.source_kind == "item_list":
        return []
    from .sources import list_files

    source = submission.source
    return list_files(source.s3_paths, source.includes, source.excludes, config.storage_options())
