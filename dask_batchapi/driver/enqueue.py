"""A job's batch references, built inside the driver once it has a cluster.

Files are listed once, at submit (a bad path fails the submission, nothing starts), and the
listing is stored with the job, so a resumed run numbers its batches exactly as the first one.
Delimited files are indexed ON THE WORKERS (:func:`~dask_batchapi.sources.index_file`), a bounded
window of files ahead of the batches being cut; the driver only sees each file's value count
and sampled offsets, never its bytes.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator

from distributed import Client, get_worker

from dask_batchapi.driver.ledger import ref_from_dict
from dask_batchapi.errors import SourceError
from dask_batchapi.sources.batches import (
    BatchRef,
    FileIndex,
    granularity_for,
    index_file,
    iter_delimited_batches,
    iter_file_batches,
    iter_item_batches,
)
from dask_batchapi.spec.api_spec import Submission
from dask_batchapi.spec.record import JobRecord

logger = logging.getLogger(__name__)

_INDEX_ATTEMPTS = 3  # a file whose index task fails this often fails the job (enqueue_failed)


def index_on_worker(url: str, granularity: int, storage_options: dict, job_id: str) -> tuple:
    """Dask task: index a file, keep its parsed values in this worker's cache for the job's
    batches, and say which worker holds them."""
    index = index_file(url, granularity, storage_options, cache_key=job_id)
    return index, get_worker().address


class RemoteIndexer:
    """Indexes delimited files on the workers, in order, a window of files ahead.

    ``location`` remembers which worker indexed (and caches) each of the recent files, so the
    driver can send a file's batches there first.
    """

    def __init__(
        self,
        client: Client,
        files: list[str],
        granularity: int,
        storage_options: dict,
        job_id: str,
        window: int = 8,
    ):
        self.client, self.files, self.granularity = client, files, granularity
        self.storage_options, self.window, self.job_id = storage_options, window, job_id
        self.values = 0
        self.location: OrderedDict[str, str] = OrderedDict()  # url -> worker, recent files
        self.wait: Callable[[], None] = lambda: None  # the driver's housekeeping while blocked

    def __iter__(self) -> Iterator[FileIndex]:
        pending: deque = deque()
        urls = iter(self.files)
        while True:
            while len(pending) < self.window:
                url = next(urls, None)
                if url is None:
                    break
                pending.append((url, self._submit(url)))
            if not pending:
                return
            index = self._result(*reversed(pending.popleft()))
            self.values += index.count
            yield index

    def _result(self, future, url: str) -> FileIndex:
        """The file's index; a failed index task is tried again (S3 hiccups) before failing."""
        for attempt in range(1, _INDEX_ATTEMPTS + 1):
            done = threading.Event()
            future.add_done_callback(lambda _, done=done: done.set())
            while not done.wait(0.2):
                self.wait()
            if future.status == "finished":
                index, worker = future.result()
                self.location[url] = worker
                while len(self.location) > 4 * self.window:  # O(window), not O(files)
                    self.location.popitem(last=False)
                return index
            exc = future.exception()
            if attempt == _INDEX_ATTEMPTS:
                raise SourceError(f"indexing input failed: {exc}") from None
            logger.warning("indexing %s failed (attempt %d): %s; retrying", url, attempt, exc)
            future = self._submit(url)
        raise AssertionError("unreachable")

    def _submit(self, url: str):
        return self.client.submit(
            index_on_worker, url, self.granularity, self.storage_options, self.job_id, pure=False
        )

    def locate(self, ref: BatchRef) -> str | None:
        """The worker that holds the parsed values of the batch's first file, if known."""
        return self.location.get(ref.segments[0].url) if ref.segments else None


def batch_refs(
    submission: Submission,
    record: JobRecord,
    files: list[str] | None,
    client: Client,
    storage_options: dict,
    on_total: Callable[[int], None],
) -> tuple[Iterator[BatchRef], RemoteIndexer | None]:
    """The job's batch references, and the indexer to hook into the driver (delimited)."""
    if record.retry_refs is not None:
        return (ref_from_dict(d, i) for i, d in enumerate(record.retry_refs)), None
    source, kind = submission.source, submission.source_kind
    if kind == "item_list":
        return iter_item_batches(source.items, source.batch_size), None
    if kind == "file_path_lister":
        return iter_file_batches(files, source.batch_size), None
    indexer = RemoteIndexer(
        client, files, granularity_for(source.batch_size), storage_options, record.job_id
    )

    def refs() -> Iterator[BatchRef]:
        yield from iter_delimited_batches(indexer, source.batch_size)
        on_total(math.ceil(indexer.values / source.batch_size))

    return refs(), indexer
