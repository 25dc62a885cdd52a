"""dask-batchapi: Cortex-style Batch APIs on Dask.

>>> import dask_batchapi as batchapi
>>> api = batchapi.deploy("examples/word-count")                       # doctest: +SKIP
>>> job = api.submit({"workers": 2, "item_list": {"items": [1, 2, 3], "batch_size": 2}})  # doctest: +SKIP
>>> job.wait()                                                          # doctest: +SKIP
'succeeded'
"""

from __future__ import annotations

from dask_batchapi import config as _config  # noqa: F401 - registers the batchapi.* dask config defaults
from dask_batchapi.api.client import BatchAPI, BatchClient, Job, client, deploy, get_job
from dask_batchapi.errors import (
    APINotFound,
    APIRedeployed,
    BatchAPIError,
    ClusterError,
    ConfigError,
    CortexPackageWarning,
    EnvironmentNotFound,
    HandlerError,
    JobNotFound,
    JobStateError,
    SourceError,
    SpecError,
    StoreError,
    SubmissionError,
)
from dask_batchapi.logging import logger
from dask_batchapi.status import JobStatus

__version__ = "0.1.0"

__all__ = [
    "APINotFound",
    "APIRedeployed",
    "BatchAPI",
    "BatchAPIError",
    "BatchClient",
    "ClusterError",
    "ConfigError",
    "CortexPackageWarning",
    "EnvironmentNotFound",
    "HandlerError",
    "Job",
    "JobNotFound",
    "JobStateError",
    "JobStatus",
    "SourceError",
    "SpecError",
    "StoreError",
    "SubmissionError",
    "__version__",
    "client",
    "deploy",
    "get_job",
    "logger",
]
