"""Worker side of worker leases: install and remove a job's plugin on one worker.

The scheduler's lease table (:mod:`dask_batchapi.cluster.leases`) runs these on a worker it
leases to a job (setup) and on one it takes back (teardown), as out-of-band ``run`` calls.
:func:`remove_job_plugin` returns only once the job's cleanup has ended on the worker, even
when a batch still running made the plugin finish it on a thread: the next job's setup there
starts after that.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)

_CLEANUP_WAIT = 3600.0  # seconds; a handler stuck longer keeps its worker out of the pool


async def install_job_plugin(plugin: bytes, name: str, dask_worker=None) -> bool:
    """Set the job's plugin up on this worker; False when its setup failed (logged there)."""
    result = await dask_worker.plugin_add(plugin=plugin, name=name, catch_errors=True)
    return result.get("status") == "OK"


async def remove_job_plugin(name: str, dask_worker=None) -> bool:
    """Tear the job's plugin down on this worker and wait until its cleanup has ended."""
    plugin = dask_worker.plugins.get(name)
    if plugin is None:
        return False
    await dask_worker.plugin_remove(name=name)
    cleaned = getattr(plugin, "cleaned", None)
    if cleaned is not None:
        await asyncio.to_thread(cleaned.wait, _CLEANUP_WAIT)
    return True
