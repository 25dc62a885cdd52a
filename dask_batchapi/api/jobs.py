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
from pathlib import Path, PurePosixPath
from typing import Any

from dask_batchapi import config
from dask_batchapi.api.versions import check_resume, spec_sha256
from dask_batchapi.driver import warm as service
from dask_batchapi.driver.launch import is_detachable
from dask_batchapi.driver.ledger import read_dead_letter
from dask_batchapi.driver.liveness import driver_alive, lease_busy, read_state
from dask_batchapi.errors import ClusterError, JobStateError, SpecError, SubmissionError
from dask_batchapi.fsutil import private_runtime_dir
from dask_batchapi.spec.api_spec import (
    Submission,
    api_specs_from_dict,
    load_api_specs,
    locate_project,
)
from dask_batchapi.spec.project import check_handler, pack_project
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.spec.submission import check_new_items
from dask_batchapi.status import JobState, JobStatus, is_interrupted, status_document, utcnow_iso
from dask_batchapi.store import lease
from dask_batchapi.store.jobstore import JobStore
from dask_batchapi.worker.scope import current as current_scope

logger = logging.getLogger(__name__)


# -- deploy ---------------------------------------------------------------------------------
def deploy(store: JobStore, project_dir: str | os.PathLike, api_spec: Any = None) -> list[dict]:
    """Validate and store every API of a project directory (or of a spec file's path: the
    project is then the file's folder); returns their records.

    ``api_spec``: the spec as a dict (Cortex's ``create_api``) instead of the project's spec
    file; validated by the same rules, and nothing is written into the project."""
    if api_spec is None:
        project, spec_file = locate_project(Path(project_dir).expanduser().resolve())
        specs = load_api_specs(spec_file)
    else:
        project = Path(project_dir).expanduser().resolve()
        specs = api_specs_from_dict(api_spec, project)
    records = []
    for spec in specs:
        signature = check_handler(project, spec.handler)
        left_out = spec.spec_file if api_spec is None else None  # a given spec: every file ships
        archive = pack_project(project, left_out, config.get("project-max-bytes"))
        _check_handler_packed(spec.handler.path, archive.files, spec.name)
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


def _check_handler_packed(handler_path: str, files: Sequence[str], api_name: str) -> None:
    """The handler file must travel to the workers: an ignore file may not leave it out."""
    rel = PurePosixPath(handler_path.replace("\\", "/")).as_posix().removeprefix("./")
    if rel not in files:
        raise SpecError(
            f"API {api_name!r}: its handler {handler_path} is left out of the project archive"
            " (by .cortexignore / .batchapiignore); the workers could not import it"
        )


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
        spec_sha256=spec_sha256(api["spec"]),
        submission_sha256=original.submission_sha256,  # its items are read lazily: not hashed
        retry_of=job_id,
        retry_refs=tuple(r["ref"] for r in dead),
        triggered_by=_parent(),
    )
    _write_new_job(store, record)
    return record


def create_job(store: JobStore, api: dict, submission: Submission, cluster: Any) -> JobRecord:
    """Validate what only the data can tell (files match), then write the job (``pending``)."""
    if submission.output and "://" not in submission.output:
        # a local output path means the submitter's directory, not the driver's or a worker's
        submission = replace(submission, output=os.path.abspath(submission.output))
    check_new_items(submission)
    files = matched_files(submission) if submission.source_kind != "item_list" else None
    record = JobRecord.new(
        api["name"],
        submission,
        cluster=cluster,
        archive_sha256=api["archive_sha256"],
        spec_sha256=spec_sha256(api["spec"]),
        file_count=None if files is None else len(files),
        triggered_by=_parent(),
    )
    _write_new_job(store, record, files)
    return record


def _write_new_job(store: JobStore, record: JobRecord, files: list[str] | None = None) -> None:
    """Write everything of a new job, or (a full store, say) nothing: a failed submit leaves
    no item segments behind to fill the store further."""
    try:
        if files is not None:
            store.put_listing(record.api_name, record.job_id, files)
        store.create_job(record)
        state = JobState(total_batch_count=record.known_batch_count)
        store.write_state(record.api_name, record.job_id, state.to_dict())
        lease.acquire(store, record.api_name, record.job_id, 0, by="submit")
    except BaseException:
        store.discard_job(record.api_name, record.job_id)
        raise
    scope = current_scope()
    if scope is not None and scope.store == store.url:  # the parent's driver lists it
        scope.note_triggered(record.api_name, record.job_id)


def _parent() -> dict | None:
    """The job whose handler code runs this submission, if any (``triggered_by``)."""
    scope = current_scope()
    return scope.ref if scope is not None else None


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
    if is_detachable(target) and kind != "kubernetes":  # a runner's log and maybe its socket
        private_runtime_dir("dask-batchapi-runners")  # refused here if squatted: nothing written
        if service.serves(target):
            private_runtime_dir("dask-batchapi")
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
    """Ask the job's driver to stop it; JobStateError if the job has already ended."""
    store.get_job(api_name, job_id)
    state = read_state(store, api_name, job_id)
    if state.job_status.is_terminal:
        raise JobStateError(f"job {job_id} had already ended ({state.status}); nothing to stop")
    store.request_stop(api_name, job_id)


def prepare_resume(store: JobStore, api_name: str, job_id: str, force: bool = False) -> JobRecord:
    """Check that a job can be resumed (its driver is dead, it did not succeed, its API was
    not redeployed since it ran unless ``force``)."""
    token = lease.latest(store, api_name, job_id)  # before the state: what we judge is this
    record = store.get_job(api_name, job_id)
    state = read_state(store, api_name, job_id)
    if state.job_status is JobStatus.SUCCEEDED:
        raise JobStateError(f"job {job_id} already succeeded; nothing to resume")
    grace = max(3 * float(config.get("heartbeat-timeout")), _start_timeout(record))
    busy = lease_busy(store, api_name, job_id, token, grace)
    if busy:
        raise JobStateError(f"job {job_id} is being started right now; wait for its driver")
    if busy is None and not state.job_status.is_terminal:
        _refuse_if_driver_alive(record, state)
    check_resume(store, record, state, force)
    lease.acquire(store, api_name, job_id, token, by="resume")  # of two resumes, one wins
    store.clear_stop(api_name, job_id)
    # pending again until the new driver is up, so nobody reads the old end or the dead pid
    state.move_to(JobStatus.PENDING)
    state.driver, state.heartbeat = {}, time.time()
    state.end_time, state.error, state.not_attempted = None, None, None
    store.write_state(api_name, job_id, state.to_dict())
    return record


def _refuse_if_driver_alive(record: JobRecord, state: JobState) -> None:
    """Never two drivers for one job: a driver process alive on this host wins over any
    heartbeat; elsewhere, a fresh heartbeat means alive."""
    job_id = record.job_id
    alive = driver_alive(state)
    stale = is_interrupted(
        record.job_fields(), state, time.time(), float(config.get("heartbeat-timeout"))
    )
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
