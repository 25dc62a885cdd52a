"""Stand-ins for the parts of Cortex's runtime that unmodified Cortex handlers import.

Only ``cortex_internal.lib.log.logger`` exists; it is :data:`dask_batchapi.logging.logger`.
"""
