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
from collections import deque
from collections.abc import Callable, Iterator

from distributed import Client

from .errors import SourceError
from .ledger import ref_from_dict
from .sources import (
    BatchRef,
    FileIndex,
    granularity_for,
    index_file,
    iter_delimited_batches,
    iter_file_batches,
    iter_item_batches,
)
from .spec import Submission

logger = logging.getLogger(__name__)


class RemoteIndexer:
    """Indexes delimited files on the workers, in order, a window of files ahead."""

    def __init__(
        self,
        client: Client,
        files: list[str],
        granularity: int,
        storage_options: dict,
        window: int = 8,
    ):
        self.client, self.files, self.granularity = client, files, granularity
        self.storage_options, self.window = storage_options, window
        self.values = 0
        self.wait: Callable[[], None] = lambda: None  # the driver's housekeeping while blocked

    def __iter__(self) -> Iterator[FileIndex]:
        pending: deque = deque()
        urls = iter(self.files)
        while True:
            while len(pending) < self.window:
                url = next(urls, None)
                if url is None:
                    break
                pending.append(
                    self.client.submit(
                        index_file,
                        url,
                        self.granularity,
                        self.storage_options,
                        pure=False,
                    )
                )
            if not pending:
                return
            index = self._result(pending.popleft())
            self.values += index.count
            yield index

    def _result(self, future) -> FileIndex:
        while True:
            try:
                return future.result(timeout=0.2)
            except TimeoutError:
                self.wait()
            except Exception as exc:  # noqa: BLE001 - reported as the job's enqueue failure
                raise SourceError(f"indexing input failed: {exc}") from None


def batch_refs(
    submission: Submission,
    record: dict,
    files: list[str] | None,
    client: Client,
    storage_options: dict,
    on_total: Callable[[int], None],
) -> tuple[Iterator[BatchRef], RemoteIndexer | None]:
    """The job's batch references, and the indexer to hook into the driver (delimited)."""
    if record.get("retry_refs") is not None:
        return (ref_from_dict(d, i) for i, d in enumerate(record["retry_refs"])), None
    source, kind = submission.source, submission.source_kind
    if kind == "item_list":
        return iter_item_batches(source.items, source.batch_size), None
    if kind == "file_path_lister":
        return iter_file_batches(files, source.batch_size), None
    indexer = RemoteIndexer(client, files, granularity_for(source.batch_size), storage_options)

    def refs() -> Iterator[BatchRef]:
        yield from iter_delimited_batches(indexer, source.batch_size)
        on_total(math.ceil(indexer.values / source.batch_size))

    return refs(), indexer
