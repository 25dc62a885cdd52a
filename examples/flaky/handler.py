"""Squares numbers through a flaky "service": chosen items fail their first few calls.

Job config:
  fail_on    items for which the service is unavailable at first (default: none)
  failures   how many calls of each such item fail before one succeeds (default 1)
  state_dir  where the calls are counted, shared by the workers of this machine (default: a
             folder under the temp dir named after the job, or after the job it retries, so a
             retry sees the failures of the job it retries)
"""

import tempfile
from pathlib import Path

from dask_batchapi import logger


class ServiceUnavailable(Exception):
    """What the simulated downstream service raises."""


class Handler:
    def __init__(self, config, job_spec):
        self.fail_on = set(config.get("fail_on") or [])
        self.failures = int(config.get("failures", 1))
        first_job = job_spec.get("retry_of") or job_spec["job_id"]
        default_dir = Path(tempfile.gettempdir()) / "batchapi-flaky" / first_job
        self.state_dir = Path(config.get("state_dir") or default_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def handle_batch(self, payload, batch_id):
        for item in payload:
            if item in self.fail_on and self._count_call(item) <= self.failures:
                raise ServiceUnavailable(f"service unavailable for item {item!r}")
        logger.info("squared batch", extra={"items": len(payload)})
        return [{"item": item, "square": item * item} for item in payload]

    def _count_call(self, item) -> int:
        """Count one call for ``item`` (in a file, so every worker process sees it)."""
        path = self.state_dir / f"calls-{item}"
        with open(path, "a") as f:  # one byte per call; a batch's attempts never overlap
            f.write(".")
        return path.stat().st_size
