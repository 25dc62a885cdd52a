"""The detached process that hosts a job's driver (and, for ``local``, its cluster).

``python -m dask_batchapi.runner --store URL --cluster TARGET API JOB_ID`` — started by
``submit`` / ``resume`` in its own session, so the job outlives the terminal or kernel that
submitted it. It exits when the job reaches a final status.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from . import config
from .cluster import backend_for, task_resources
from .enqueue import batch_refs
from .jobs import job_spec_for, known_total, submission_of
from .ledger import load_final
from .runtime import JobContext
from .scheduler import JobDriver
from .spec import APISpec, Submission, api_spec_from_dict, deep_merge
from .status import JobState, JobStatus, utcnow_iso
from .store import JobStore

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
            self.store.write_pulse(self.api_name, self.job_id, pulse)
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
            logger.warning("heartbeat of job %s not written: %s", self.job_id, exc)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop_event.set()


def run_job(store: JobStore, api_name: str, job_id: str, cluster: Any) -> JobStatus:
    """Drive a job (a new one, or the rest of an interrupted one) to a final status."""
    pulse = Pulse(store, api_name, job_id)
    pulse.beat()
    pulse.start()
    try:
        return _run_job(store, api_name, job_id, cluster)
    finally:
        pulse.stop()


def _run_job(store: JobStore, api_name: str, job_id: str, cluster: Any) -> JobStatus:
    record = store.get_job(api_name, job_id)
    api = store.get_api(api_name)
    state = JobState.from_dict(store.read_state(api_name, job_id))
    state.run += 1
    state.move_to(JobStatus.ENQUEUING)
    state.heartbeat = time.time()
    state.driver = {"host": socket.gethostname(), "pid": os.getpid()}
    store.write_state(api_name, job_id, state.to_dict())
    submission = submission_of(record)
    spec = api_spec_from_dict(api["spec"])
    final = load_final(store, api_name, job_id) if state.run > 1 else None
    if final is not None:  # the ledger is the truth; the state may be a checkpoint older
        state.succeeded, state.dead_lettered = len(final.succeeded), len(final.dead_lettered)
    state.in_flight = 0
    files = store.get_listing(api_name, job_id)
    if state.total_batch_count is None:
        state.total_batch_count = known_total(submission, files)
    compute = api["spec"].get("compute")
    try:
        with backend_for(cluster, submission.workers, compute, job=record) as client:
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
                _context(record, api, spec, submission, state),
                store.get_archive(api_name, record["archive_sha256"]),
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
    except Exception as exc:  # noqa: BLE001 - the job must end in a final status
        if state.job_status.is_terminal:  # e.g. closing the cluster failed after the end
            logger.warning("job %s ended %s; then: %s", job_id, state.status, exc)
            return state.job_status
        logger.exception("job %s could not run", job_id)
        state.move_to(JobStatus.UNEXPECTED_ERROR)
        state.error = {"type": type(exc).__name__, "message": str(exc), "reason": "driver"}
        state.end_time = utcnow_iso()
        store.write_state(api_name, job_id, state.to_dict())
        return JobStatus.UNEXPECTED_ERROR


def _context(
    record: dict, api: dict, spec: APISpec, submission: Submission, state: JobState
) -> JobContext:
    return JobContext(
        job_id=record["job_id"],
        api_name=record["api_name"],
        handler_path=spec.handler.path,
        python_path=spec.handler.python_path,
        signature=api["signature"],
        config=deep_merge(spec.handler.config, submission.config),
        job_spec=job_spec_for(record, state),
        env={k: str(v) for k, v in spec.handler.env.items()},
        log_level=spec.handler.log_level,
        output=submission.output,
        storage_options=config.storage_options(),
        batch_timeout=submission.batch_timeout,
        batch_timeout_grace=float(config.get("batch-timeout-grace")),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dask_batchapi.runner")
    parser.add_argument("--store", required=True)
    parser.add_argument("--cluster", default="local")
    parser.add_argument("api_name")
    parser.add_argument("job_id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # SIGTERM ends the process like Ctrl-C would, so `finally` blocks close the cluster
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    status = run_job(JobStore(args.store), args.api_name, args.job_id, args.cluster)
    logger.info("job %s ended: %s", args.job_id, status.value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
