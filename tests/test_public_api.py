"""The public surface is listed in ``__all__``, sorted, and every name in it exists."""

from __future__ import annotations

import dask_batchapi


def test_all_is_sorted_and_complete():
    names = dask_batchapi.__all__
    assert names == sorted(names)
    assert all(hasattr(dask_batchapi, name) for name in names)
    for needed in (
        "deploy",
        "client",
        "get_job",
        "BatchAPI",
        "Job",
        "JobStatus",
        "logger",
        "BatchAPIError",
    ):
        assert needed in names


def test_cortex_logger_is_the_package_logger():
    from cortex_internal.lib.log import logger

    assert logger is dask_batchapi.logger
