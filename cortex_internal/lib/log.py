"""Cortex's structured logger, for handlers written for Cortex.

``from cortex_internal.lib.log import logger as cortex_logger`` gives the very same logger as
``from dask_batchapi.logging import logger``: JSON lines with the job's context.
"""

from __future__ import annotations

from dask_batchapi.logging import logger

__all__ = ["logger"]
