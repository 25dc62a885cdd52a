"""The job store: APIs, project archives, job records, status, ledger, dead letter and logs.

It lives on any fsspec filesystem (a local directory by default, ``s3://bucket/prefix`` to share
it between machines). Every object is written whole and atomically: a temporary file renamed
into place locally, a single PUT on object stores. Append-only data (ledger, dead letter, logs)
is written as new numbered segments, so a checkpoint costs O(changes), never O(job)::

    <root>/apis/<api>/api.json                      spec, handler signature, archive hash
    <root>/apis/<api>/archives/<sha256>.zip         the packed project
    <root>/jobs/<api>/<job_id>/job.json             the job record (immutable after submit)
    <root>/jobs/<api>/<job_id>/state.json           status, metrics, heartbeat (rewritten, small)
    <root>/jobs/<api>/<job_id>/pulse.json           the driver process's heartbeat
    <root>/jobs/<api>/<job_id>/stop                 a stop request
    <root>/jobs/<api>/<job_id>/ledger/<seg>.json    batch indices that became final
    <root>/jobs/<api>/<job_id>/dead_letter/<seg>.json  failed batches with input and error
    <root>/jobs/<api>/<job_id>/logs/<seg>.jsonl     log lines of every worker
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import fsspec

from dask_batchapi import config
from dask_batchapi.errors import APINotFound, BatchAPIError, JobNotFound, StoreError
from dask_batchapi.fsutil import atomic_write
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.store.checks import check_api, check_state

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_JOB_ID = re.compile(r"[0-9a-f]{16}")


def _check_name(name: str, what: str, error: type[Exception]) -> None:
    """Names become paths in the store: never let one reach outside its place."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise error(f"no API named {name!r}: an {what} is lowercase letters, digits and '-'")


class JobStore:
    """A store rooted at ``url`` (local path or fsspec URL).

    >>> store = JobStore("/tmp/batchapi-store")  # doctest: +SKIP
    >>> store.list_apis()  # doctest: +SKIP
    []
    """

    def __init__(self, url: str | None = None, storage_options: dict | None = None):
        self.url = config.store_url(url)
        options = config.storage_options() if storage_options is None else storage_options
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise StoreError(f"store {self.url!r} cannot be opened: {exc}") from None
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"JobStore({self.url!r})"

    # -- primitives ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _io(self, action: str, path: str) -> Iterator[None]:
        """Any failure of the filesystem as one StoreError line (FileNotFoundError passes)."""
        try:
            yield
        except (FileNotFoundError, BatchAPIError):
            raise
        except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own (botocore's)
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise StoreError(f"cannot {action} {path} in store {self.url}: {reason}") from None

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` atomically (readers see the old or the new object)."""
        with self._io("write", path):
            atomic_write(self.fs, path, data)

    def read_bytes(self, path: str) -> bytes:
        """The object at ``path``; FileNotFoundError if absent, StoreError if unreadable."""
        with self._io("read", path):
            return self.fs.cat_file(path)

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, default=str).encode())

    def read_json(self, path: str) -> Any:
        data = self.read_bytes(path)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StoreError(f"store object {path} is not valid JSON: {exc}") from None

    def exists(self, path: str) -> bool:
        with self._io("read", path):
            self.fs.invalidate_cache(path)  # another machine may have written it
            return self.fs.exists(path)

    def _names(self, path: str) -> list[str]:
        """Sorted base names below ``path`` (empty if it does not exist)."""
        try:
            with self._io("list", path):
                entries = self.fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        names = (e.rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return sorted(n for n in names if ".tmp-" not in n)

    def _remove(self, path: str) -> None:
        with self._io("delete", path):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def check_readable(self) -> None:
        """Raise StoreError unless the store's root can be listed (a missing root is fine)."""
        self._names(self.root)

    # -- APIs ---------------------------------------------------------------------------------
    def put_api(self, record: dict, archive: bytes) -> None:
        """Store an API's archive, then its record; a failed deploy leaves no new archive."""
        name, sha = record["name"], record["archive_sha256"]
        archive_path = self._path("apis", name, "archives", f"{sha}.zip")
        new_archive = not self.exists(archive_path)
        if new_archive:
            self.write_bytes(archive_path, archive)
        try:
            self.write_json(self._path("apis", name, "api.json"), record)
        except StoreError:
            if new_archive:
                self.discard(archive_path)
            raise

    def discard(self, path: str) -> None:
        """Remove ``path`` (recursively) if possible: cleaning up after a failed write."""
        try:
            self._remove(path)
        except StoreError as exc:
            logger.warning("%s", exc)

    def discard_job(self, api: str, job_id: str) -> None:
        """Remove what a failed submit wrote of a job (items, listing, record, state)."""
        self.discard(self._job(api, job_id))

    def drop_pulse(self, api: str, job_id: str) -> None:
        """Remove the driver's heartbeat object (an ended driver's, to make room on a full
        store for its final state)."""
        self.discard(self._job(api, job_id, "pulse.json"))

    def get_api(self, name: str) -> dict:
        _check_name(name, "API name", APINotFound)
        try:
            data = self.read_json(self._path("apis", name, "api.json"))
        except FileNotFoundError:
            raise APINotFound(
                f"no API named {name!r} in store {self.url} (deploy it first: "
                f"dask-batchapi deploy PROJECT_DIR)"
            ) from None
        return check_api(data, f"apis/{name}/api.json in store {self.url}")

    def get_archive(self, name: str, sha256: str) -> bytes:
        """The API's project archive, verified against its sha256 (a changed one is refused)."""
        path = self._path("apis", name, "archives", f"{sha256}.zip")
        try:
            data = self.read_bytes(path)
        except FileNotFoundError:
            raise StoreError(f"project archive {sha256[:12]} of API {name!r} is missing") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise StoreError(
                f"project archive {path} was changed in the store: its sha256 is {actual[:12]},"
                f" not {sha256[:12]}; deploy the API again"
            )
        return data

    def list_apis(self) -> list[dict]:
        """Every deployed API's record (a corrupted one marked ``unreadable``)."""
        records = []
        for name in self._names(self._path("apis")):
            try:
                records.append(self.get_api(name))
            except APINotFound:
                continue  # a half-deleted API
            except StoreError as exc:  # one corrupted API: marked, the others still listed
                records.append({"name": name, "unreadable": True, "error": str(exc)})
        if not records:
            self._check_bucket()
        return records

    def _check_bucket(self) -> None:
        """On an object store, a missing bucket is an error, not an empty store."""
        if self.fs.protocol in ("file", "local") or "file" in self.fs.protocol:
            return
        bucket = self.root.split("/", 1)[0]
        with self._io("read", bucket):
            if not self.fs.exists(bucket):
                raise StoreError(f"bucket {bucket!r} of store {self.url} does not exist")

    def delete_api(self, name: str) -> None:
        self.get_api(name)
        self._remove(self._path("jobs", name))
        self._remove(self._path("apis", name))

    # -- jobs ---------------------------------------------------------------------------------
    def _job(self, api: str, job_id: str, *parts: str) -> str:
        _check_name(api, "API name", APINotFound)
        if not _JOB_ID.fullmatch(job_id):
            raise JobNotFound(f"no job {job_id!r} for API {api!r}: job ids are 16 hex digits")
        return self._path("jobs", api, job_id, *parts)

    def create_job(self, record: JobRecord) -> None:
        """Write a new job's record (and, for an item_list, its items in segments)."""
        if record.item_count is not None and not isinstance(
            record.submission.source.items, StoredItems
        ):
            self.put_items(record.api_name, record.job_id, record.submission.source.items)
        self.write_json(self._job(record.api_name, record.job_id, "job.json"), record.to_dict())

    def job_exists(self, api: str, job_id: str) -> bool:
        """Whether the job's record is still there (``delete`` removes it)."""
        return self.exists(self._job(api, job_id, "job.json"))

    def get_job(self, api: str, job_id: str) -> JobRecord:
        """The job's record; an item_list's items stream from the store (:class:`StoredItems`)."""
        data = self.get_job_dict(api, job_id)
        items = None
        source = (data.get("submission") or {}).get("item_list") if isinstance(data, dict) else None
        if isinstance(source, dict) and "items" not in source and "item_count" in source:
            items = StoredItems(self, api, job_id, int(source["item_count"]))
        return JobRecord.from_dict(data, items, where=f"{api}/{job_id}/job.json")

    def get_job_dict(self, api: str, job_id: str) -> Any:
        """The job's record as stored (``job.json``); :meth:`get_job` reads it typed."""
        try:
            return self.read_json(self._job(api, job_id, "job.json"))
        except FileNotFoundError:
            self.get_api(api)
            raise JobNotFound(f"no job {job_id!r} for API {api!r} in store {self.url}") from None

    def list_job_ids(self, api: str) -> list[str]:
        """Job ids of ``api``, newest first (ids sort that way)."""
        return [n for n in self._names(self._path("jobs", api)) if _JOB_ID.fullmatch(n)]

    def put_listing(self, api: str, job_id: str, files: list[str]) -> None:
        """The input files matched at submit, so every run of the job sees the same list."""
        self.write_json(self._job(api, job_id, "files.json"), files)

    def get_listing(self, api: str, job_id: str) -> list[str] | None:
        try:
            return self.read_json(self._job(api, job_id, "files.json"))
        except FileNotFoundError:
            return None

    def put_items(self, api: str, job_id: str, items: list, per_segment: int = 10_000) -> None:
        """An item_list job's items, as segments of ``per_segment`` items: the driver streams
        them (:class:`StoredItems`), so its memory does not grow with the job."""
        for n, start in enumerate(range(0, len(items), per_segment)):
            segment = items[start : start + per_segment]
            self.append_segment(api, job_id, "items", f"{n:08d}.json", segment)

    def write_state(self, api: str, job_id: str, state: dict) -> None:
        self.write_json(self._job(api, job_id, "state.json"), state)

    def read_state(self, api: str, job_id: str) -> dict | None:
        """The job's state as stored (checked: StoreError naming a corrupted file)."""
        try:
            data = self.read_json(self._job(api, job_id, "state.json"))
        except FileNotFoundError:
            return None
        return check_state(data, f"{api}/{job_id}/state.json in store {self.url}")

    def write_pulse(self, api: str, job_id: str, pulse: dict) -> None:
        """The driver process's heartbeat, beaten by a thread of its own (see runner.Pulse)."""
        self.write_json(self._job(api, job_id, "pulse.json"), pulse)

    def read_pulse(self, api: str, job_id: str) -> float | None:
        try:
            return float(self.read_json(self._job(api, job_id, "pulse.json"))["time"])
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            return None

    def request_stop(self, api: str, job_id: str) -> None:
        self.write_bytes(self._job(api, job_id, "stop"), b"stop")

    def clear_stop(self, api: str, job_id: str) -> None:
        self._remove(self._job(api, job_id, "stop"))

    def stop_requested(self, api: str, job_id: str) -> bool:
        return self.exists(self._job(api, job_id, "stop"))

    # -- append-only segments -----------------------------------------------------------------
    def append_segment(self, api: str, job_id: str, kind: str, segment: str, data: Any) -> None:
        """Write one new segment of ``kind`` (ledger, dead_letter, logs, items)."""
        path = self._job(api, job_id, kind, segment)
        if kind == "logs":
            self.write_bytes(path, ("\n".join(data) + "\n").encode())
        else:
            self.write_json(path, data)

    def segments(self, api: str, job_id: str, kind: str, after: str | None = None) -> list[str]:
        names = self._names(self._job(api, job_id, kind))
        return [n for n in names if after is None or n > after]

    def read_segment(self, api: str, job_id: str, kind: str, segment: str) -> Any:
        path = self._job(api, job_id, kind, segment)
        if kind == "logs":
            return self.read_bytes(path).decode().splitlines()
        return self.read_json(path)

    def iter_segments(self, api: str, job_id: str, kind: str) -> Iterator[Any]:
        for name in self.segments(api, job_id, kind):
            yield self.read_segment(api, job_id, kind, name)


class StoredItems:
    """The items of an item_list job, streamed from the store one segment at a time.

    Stands in for the list in a stored job's :class:`~dask_batchapi.spec.ItemList`: it has a
    length (known from the record) and can be iterated, in order, any number of times.
    """

    def __init__(self, store: JobStore, api: str, job_id: str, count: int):
        self.store, self.api, self.job_id, self.count = store, api, job_id, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        for segment in self.store.iter_segments(self.api, self.job_id, "items"):
            yield from segment

    def __repr__(self) -> str:
        return f"StoredItems({self.api}/{self.job_id}, {self.count} items)"
