"""Job mechanics shared by the Python API and the CLI: deploy, submit, run, stop, resume.

``submit`` validates everything first (nothing is written for a bad submission), writes the
job record (``pending``), then starts the job's driver: detached in its own process (the
default for ``local`` and scheduler addresses, so the job outlives the caller) or on a thread
of the caller when the cluster is a live ``Client`` object.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dask_batchapi import config
from dask_batchapi.driver import warm as service
from dask_batchapi.driver.ledger import read_dead_letter
from dask_batchapi.driver.liveness import driver_alive, read_state
from dask_batchapi.errors import ClusterError, JobStateError, SubmissionError
from dask_batchapi.spec.api_spec import Submission, load_api_specs
from dask_batchapi.spec.project import check_handler, pack_project
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.status import JobState, JobStatus, is_interrupted, status_document, utcnow_iso
from dask_batchapi.store.jobstore import JobStore

logger = logging.getLogger(__name__)

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
def create_retry_job(store: JobStore, api_name: str, job_id: str, cluster: Any) -> JobRecord:
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
    record = JobRecord.new(
        api_name,
        original.submission,
        cluster=cluster,
        archive_sha256=api["archive_sha256"],
        retry_of=job_id,
        retry_refs=tuple(r["ref"] for r in dead),
    )
    _write_new_job(store, record)
    return record


def create_job(store: JobStore, api: dict, submission: Submission, cluster: Any) -> JobRecord:
    """Validate what only the data can tell (files match), then write the job (``pending``)."""
    if submission.output and "://" not in submission.output:
        # a local output path means the submitter's directory, not the driver's or a worker's
        submission = replace(submission, output=os.path.abspath(submission.output))
    files = matched_files(submission) if submission.source_kind != "item_list" else None
    record = JobRecord.new(
        api["name"],
        submission,
        cluster=cluster,
        archive_sha256=api["archive_sha256"],
        file_count=None if files is None else len(files),
    )
    if files is not None:
        store.put_listing(record.api_name, record.job_id, files)
    _write_new_job(store, record)
    return record


def _write_new_job(store: JobStore, record: JobRecord) -> None:
    store.create_job(record)
    state = JobState(total_batch_count=record.known_batch_count)
    store.write_state(record.api_name, record.job_id, state.to_dict())


def with_workers(submission: Submission, workers: int | None) -> Submission:
    if workers is None:
        return submission
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SubmissionError(f"--workers must be an integer >= 1, got {workers!r}")
    return replace(submission, workers=workers)


def check_cluster(target: Any, store_url: str | None = None, urls: Sequence[str] = ()) -> None:
    """Reject a cluster target that cannot work, before anything is written (one line).

    ``urls``: the job's inputs and output; on Kubernetes they, and the store, must be shared.
    """
    kind = config.cluster_kind(target)
    if kind == "kubernetes":
        from dask_batchapi.cluster.kubernetes import check_submit

        check_submit(store_url or config.store_url(), urls)
    if kind != "address" or (
        service.serves(target) and service.answers(service.service_key(target))
    ):
        return  # a warm runner holds a live connection to that scheduler
    from dask_batchapi.cluster.backends import check_address

    check_address(target)  # a Dask handshake, TLS included: a missing certificate fails here


def data_urls(submission: Submission) -> list[str]:
    """The job's input prefixes and output location."""
    urls = list(getattr(submission.source, "s3_paths", None) or ())
    return urls + ([submission.output] if submission.output else [])


# -- reading and controlling ----------------------------------------------------------------
def job_status(store: JobStore, api_name: str, job_id: str, api_spec: dict | None = None) -> dict:
    """The job's status document (``api_spec``: the API's spec, when the caller has it)."""
    record = store.get_job(api_name, job_id)
    state = read_state(store, api_name, job_id)
    if api_spec is None:
        api_spec = store.get_api(api_name)["spec"]
    return status_document(
        record.job_fields(),
        state,
        api_spec,
        now=time.time(),
        heartbeat_timeout=float(config.get("heartbeat-timeout")),
        driver_dead=driver_alive(state) is False,
        start_timeout=_start_timeout(record),
    )


def _start_timeout(record: JobRecord) -> float:
    """How long a job may wait for its driver's first heartbeat (a pod must be scheduled)."""
    if record.cluster == "kubernetes":
        return float(config.get("kubernetes.driver.start-timeout"))
    return 0.0


def stop_job(store: JobStore, api_name: str, job_id: str) -> None:
    store.get_job(api_name, job_id)
    store.request_stop(api_name, job_id)


def prepare_resume(store: JobStore, api_name: str, job_id: str) -> JobRecord:
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


def _refuse_if_driver_alive(record: JobRecord, state: JobState) -> None:
    """Never two drivers for one job: a driver process alive on this host wins over any
    heartbeat; elsewhere, a fresh heartbeat means alive."""
    job_id = record.job_id
    alive = driver_alive(state)
    stale = is_interrupted(record.job_fields(), state, time.time(), float(config.get("heartbeat-timeout")))
    if alive is True or (alive is None and not stale):
        raise JobStateError(
            f"job {job_id} is {state.status} and its driver is alive; stop it first or wait"
        )


def cluster_status(target: Any) -> dict:
    """The workers of ``target``'s cluster with the job holding each, and the jobs that hold or
    wait for workers (``scheduler``: its address; None when no local runner is up)."""
    kind = config.cluster_kind(target)
    if kind == "kubernetes":
        raise ClusterError(
            "cluster status needs a scheduler address on kubernetes "
            "(each job has its own DaskCluster): pass --cluster tcp://..."
        )
    if kind == "local":
        target = service.scheduler_address(service.service_key("local"))
        if target is None:
            return {"scheduler": None, "workers": [], "jobs": []}
    from distributed import Client

    from dask_batchapi.cluster.backends import client_security, driver_client
    from dask_batchapi.driver.workers import cluster_status as lease_status

    if isinstance(target, Client):
        return {"scheduler": target.scheduler.address, **lease_status(target)}
    security = client_security(target) if kind == "address" else None
    with driver_client(target, security=security) as client:
        return {"scheduler": client.scheduler.address, **lease_status(client)}


def matched_files(submission: Submission) -> list[str]:
    """The input URLs a submission matches (empty for item_list); SourceError if none."""
    if submission.source_kind == "item_list":
        return []
    from dask_batchapi.sources.batches import list_files

    source = submission.source
    return list_files(source.s3_paths, source.includes, source.excludes, config.storage_options())
