"""The detached process that hosts a job's driver (and, for ``local``, its cluster).

``python -m dask_batchapi.runner --store URL --cluster TARGET API JOB_ID`` — started by
``submit`` / ``resume`` in its own session, so the job outlives the terminal or kernel that
submitted it. It exits when the job reaches a final status.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .jobs import run_job
from .store import JobStore

logger = logging.getLogger(__name__)


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
