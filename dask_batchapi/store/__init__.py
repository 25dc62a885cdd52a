"""The job store on fsspec: APIs, archives, job records, state, segments; atomic writes."""

from dask_batchapi.store.jobstore import JobStore, StoredItems

__all__ = ["JobStore", "StoredItems"]
