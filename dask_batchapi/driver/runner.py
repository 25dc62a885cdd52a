"""The detached process that hosts a job's driver (and, for ``local``, its cluster).

``python -m dask_batchapi.driver --store URL --cluster TARGET API JOB_ID`` — started by
``submit`` / ``resume`` in its own session, so the job outlives the terminal or kernel that
submitted it. It exits when the job reaches a final status, or — for the embedded cluster, and
for a scheduler address with ``batchapi.keep-alive`` > 0 — after serving the next jobs until
idle that long (:mod:`dask_batchapi.driver.warm`). For ``local`` it is the machine's local
runner: it hosts the one shared embedded cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from dask_batchapi import config
from dask_batchapi.cluster import backend_for
from dask_batchapi.cluster.backends import task_resources
from dask_batchapi.driver import warm as service
from dask_batchapi.driver.children import origin_for
from dask_batchapi.driver.driver import JobDriver
from dask_batchapi.driver.enqueue import batch_refs
from dask_batchapi.driver.ledger import load_final
from dask_batchapi.driver.liveness import driver_alive
from dask_batchapi.driver.store_failure import end_unstarted, end_with_error
from dask_batchapi.errors import LeaseLost, StoreError
from dask_batchapi.protocol import JobContext
from dask_batchapi.spec.api_spec import APISpec, Submission, api_spec_from_dict, deep_merge
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.status import JobState, JobStatus
from dask_batchapi.store import lease
from dask_batchapi.store.jobstore import JobStore

logger = logging.getLogger(__name__)


class Pulse(threading.Thread):
    """Beats the driver process's heartbeat into the store, whatever the driver is doing
    (starting a cluster under load can take longer than the heartbeat timeout)."""

    def __init__(self, store: JobStore, api_name: str, job_id: str):
        super().__init__(name=f"batchapi-pulse-{job_id}", daemon=True)
        self.store, self.api_name, self.job_id = store, api_name, job_id
        self.interval = float(config.get("checkpoint-interval"))
        self._stop_event = threading.Event()

    def beat(self) -> None:
        pulse = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        try:
            if not self.store.job_exists(self.api_name, self.job_id):
                return  # deleted: writing would bring a piece of it back
            self.store.write_pulse(self.api_name, self.job_id, pulse)
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
            logger.warning("heartbeat of job %s not written: %s", self.job_id, exc)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop_event.set()


def run_job(store: JobStore, api_name: str, job_id: str, cluster: Any) -> JobStatus:
    """Drive a job (a new one, or the rest of an interrupted one) to a final status.

    Only as the holder of the job's lease (:mod:`dask_batchapi.store.lease`): a job another
    driver holds is left alone."""
    try:
        fenced = lease.adopt(store, api_name, job_id)
    except LeaseLost as exc:
        logger.warning("%s", exc)
        return JobState.from_dict(store.read_state(api_name, job_id)).job_status
    pulse = Pulse(fenced, api_name, job_id)
    pulse.beat()
    pulse.start()
    try:
        return _run_job(fenced, api_name, job_id, cluster)
    except LeaseLost as exc:
        logger.warning("%s", exc)
        return JobStatus.UNEXPECTED_ERROR
    except StoreError as exc:  # before the job started: its files unreadable, or a full store
        end_unstarted(fenced, api_name, job_id, exc)
        return JobStatus.UNEXPECTED_ERROR
    finally:
        pulse.stop()
        fenced.release()


def _run_job(store: JobStore, api_name: str, job_id: str, cluster: Any) -> JobStatus:
    record = store.get_job(api_name, job_id)
    api = store.get_api(api_name)
    state = JobState.from_dict(store.read_state(api_name, job_id))
    state.run += 1
    state.move_to(JobStatus.ENQUEUING)
    state.heartbeat = time.time()
    state.driver = {"host": socket.gethostname(), "pid": os.getpid()}
    store.write_state(api_name, job_id, state.to_dict())
    submission = record.submission
    spec = api_spec_from_dict(api["spec"])
    final = load_final(store, api_name, job_id) if state.run > 1 else None
    if final is not None:  # the ledger is the truth; the state may be a checkpoint older
        state.succeeded, state.dead_lettered = len(final.succeeded), len(final.dead_lettered)
        state.items_succeeded = final.items_succeeded
        state.items_dead_lettered = final.items_dead_lettered
    state.in_flight = 0
    files = store.get_listing(api_name, job_id)
    if state.total_batch_count is None:
        state.total_batch_count = record.known_batch_count
    compute = api["spec"].get("compute")
    try:
        with backend_for(cluster, submission.workers, compute, job=record.job_fields()) as client:
            refs, indexer = batch_refs(
                submission,
                record,
                files,
                client,
                config.storage_options(),
                on_total=lambda total: setattr(state, "total_batch_count", total),
            )
            driver = JobDriver(
                store,
                record,
                _context(
                    record, api, spec, submission, state, origin_for(store.url, record, client)
                ),
                store.get_archive(api_name, run_archive_sha256(record, state)),
                refs,
                client,
                state=state,
                skip=final or (),
                resources=task_resources(compute),
                locate=indexer.locate if indexer is not None else None,
            )
            if indexer is not None:
                indexer.wait = driver.tick
            return driver.run()
    except LeaseLost:
        raise
    except Exception as exc:  # noqa: BLE001 - the job must end in a final status
        if state.job_status.is_terminal:  # e.g. closing the cluster failed after the end
            logger.warning("job %s ended %s; then: %s", job_id, state.status, exc)
            return state.job_status
        logger.exception("job %s could not run", job_id)
        reason = "store" if isinstance(exc, StoreError) else "driver"
        end_with_error(store, api_name, job_id, state, exc, reason)
        return JobStatus.UNEXPECTED_ERROR


def run_archive_sha256(record: JobRecord, state: JobState) -> str:
    """The archive a run uses: the last version ``resume --force`` recorded, else the job's."""
    return state.versions[-1]["archive_sha256"] if state.versions else record.archive_sha256


def _context(
    record: JobRecord,
    api: dict,
    spec: APISpec,
    submission: Submission,
    state: JobState,
    origin: dict,
) -> JobContext:
    return JobContext(
        job_id=record.job_id,
        api_name=record.api_name,
        handler_path=spec.handler.path,
        python_path=spec.handler.python_path,
        signature=api["signature"],
        config=deep_merge(spec.handler.config, submission.config),
        job_spec=record.job_spec(state.total_batch_count, state.start_time),
        env={k: str(v) for k, v in spec.handler.env.items()},
        log_level=spec.handler.log_level,
        output=submission.output,
        storage_options=config.storage_options(),
        batch_timeout=submission.batch_timeout,
        batch_timeout_grace=float(config.get("batch-timeout-grace")),
        dependencies=dataclasses.asdict(spec.handler.dependencies),
        id_key=submission.id_key,
        origin=origin,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dask_batchapi.driver")
    parser.add_argument("--store", required=True)
    parser.add_argument("--cluster", default="local")
    parser.add_argument("api_name")
    parser.add_argument("job_id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # SIGTERM ends the process like Ctrl-C would, so `finally` blocks close the cluster
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    store = JobStore(args.store)
    # (a job can only be handed to a warm runner on this host: local and address targets)
    local = config.cluster_kind(args.cluster) in ("local", "address")
    if local and _taken(store, args.api_name, args.job_id):
        return 0
    if service.serves(args.cluster):
        serve(args.store, args.cluster, args.api_name, args.job_id)
        return 0
    status = run_job(store, args.api_name, args.job_id, args.cluster)
    logger.info("job %s ended: %s", args.job_id, status.value)
    return 0


def _taken(store: JobStore, api_name: str, job_id: str) -> bool:
    """Whether another live driver process of this host already runs the job: a warm runner
    that took it although its answer never reached the submitter. Never two drivers."""
    state = JobState.from_dict(store.read_state(api_name, job_id))
    if state.job_status.is_terminal or (state.driver or {}).get("pid") == os.getpid():
        return False
    if driver_alive(state):
        logger.warning("job %s is already driven by pid %s", job_id, state.driver["pid"])
        return True
    return False


def serve(store_url: str, target: str, api_name: str, job_id: str) -> None:
    """Run the job, then keep the cluster (embedded: the machine's shared one, sized
    ``local.max-workers``) or connection (address) warm for the next jobs
    (:mod:`dask_batchapi.driver.warm`), until idle for ``keep-alive`` s."""
    store = JobStore(store_url)
    record = store.get_job(api_name, job_id)
    compute = store.get_api(api_name)["spec"].get("compute")
    workers = record.workers
    if target == "local":  # shared by every job: its own size, no job's compute.mem
        workers, compute = service.local_size(), None
    # before the embedded cluster sets OMP_NUM_THREADS & co in this process' environment
    key = service.service_key(target, workers, compute)
    pulse = Pulse(store, api_name, job_id)  # the job's heartbeat while the cluster starts
    pulse.beat()
    pulse.start()
    try:
        backend = backend_for(target, workers, compute, job=record.job_fields())
        client = backend.start()
    except Exception:  # noqa: BLE001 - the job itself reports it, as without a warm runner
        pulse.stop()
        run_job(store, api_name, job_id, target)
        return
    pulse.stop()
    threads: list[threading.Thread] = []

    def start(url: str, api: str, job: str) -> threading.Thread:
        thread = threading.Thread(
            target=_run_logged,
            args=(JobStore(url), api, job, client),
            name=f"batchapi-driver-{job}",
            daemon=True,
        )
        thread.start()
        return thread

    server = service.Service(key, 1 if target == "local" else 0, start, client)
    try:
        bound = server.bind()
        threads.append(start(store_url, api_name, job_id))
        if bound:
            server.serve(threads, service.keep_alive())
        for thread in threads:
            thread.join()
    finally:
        server.close()
        backend.close()


def _run_logged(store: JobStore, api_name: str, job_id: str, client: Any) -> None:
    status = run_job(store, api_name, job_id, client)
    logger.info("job %s ended: %s", job_id, status.value)
