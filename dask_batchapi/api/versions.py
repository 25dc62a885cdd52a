"""Safe resume: a job remembers which version of its API it ran, and resume checks it.

A job record holds the project archive's sha256 and the API spec's sha256 at submit
(``archive_sha256``, ``spec_sha256``). ``resume`` compares them with the API as deployed now and
refuses when it changed, naming what did (the project files that differ, the spec), because the
rest of the job would run another handler than its first part. ``resume --force`` runs the rest
with the new version and records both in the job's state: the status document then shows
``versions`` (each with the run it started at) and ``mixed_versions: true``.

>>> spec_sha256({"name": "a"}) == spec_sha256({"name": "a"})
True
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile

from dask_batchapi.errors import APIRedeployed, StoreError
from dask_batchapi.spec.record import JobRecord
from dask_batchapi.status import JobState
from dask_batchapi.store.jobstore import JobStore

logger = logging.getLogger(__name__)


def spec_sha256(spec: dict) -> str:
    """sha256 of an API spec's canonical JSON."""
    text = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def deployed_version(api: dict) -> dict:
    """The version of an API as deployed: ``{"archive_sha256", "spec_sha256"}``."""
    return {"archive_sha256": api["archive_sha256"], "spec_sha256": spec_sha256(api["spec"])}


def ran_version(record: JobRecord, state: JobState) -> dict:
    """The version the job's last run used."""
    if state.versions:
        last = state.versions[-1]
        return {"archive_sha256": last["archive_sha256"], "spec_sha256": last["spec_sha256"]}
    return {"archive_sha256": record.archive_sha256, "spec_sha256": record.spec_sha256}


def check_resume(store: JobStore, record: JobRecord, state: JobState, force: bool) -> None:
    """Refuse to resume a job whose API changed since it ran (APIRedeployed, one line), or with
    ``force`` record the new version in ``state`` (the caller writes it)."""
    api = store.get_api(record.api_name)
    ran, now = ran_version(record, state), deployed_version(api)
    changes = _changes(store, record.api_name, ran, now)
    if not changes:
        return
    if not force:
        raise APIRedeployed(
            f"job {record.job_id} ran API {record.api_name} as deployed before; it was "
            f"redeployed since ({'; '.join(changes)}): resume --force to run the rest of the "
            "job with the new version"
        )
    logger.warning("job %s resumed with a new version of its API: %s", record.job_id, changes)
    first = state.versions or [{**ran, "from_run": 1}]
    state.versions = [*first, {**now, "from_run": state.run + 1}]


def _changes(store: JobStore, api_name: str, ran: dict, now: dict) -> list[str]:
    changes = []
    if ran["archive_sha256"] and ran["archive_sha256"] != now["archive_sha256"]:
        files = _changed_files(store, api_name, ran["archive_sha256"], now["archive_sha256"])
        changes.append(f"project files changed: {files}")
    if ran["spec_sha256"] and ran["spec_sha256"] != now["spec_sha256"]:
        changes.append("the API spec changed")
    return changes


def _changed_files(store: JobStore, api_name: str, old: str, new: str) -> str:
    """``handler.py, values.json`` (or the archives' hashes when the old one is gone)."""
    try:
        before, after = _listing(store, api_name, old), _listing(store, api_name, new)
    except (StoreError, zipfile.BadZipFile, OSError):
        return f"archive {old[:12]} -> {new[:12]}"
    names = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return shown or f"archive {old[:12]} -> {new[:12]}"


def _listing(store: JobStore, api_name: str, sha: str) -> dict[str, int]:
    with zipfile.ZipFile(io.BytesIO(store.get_archive(api_name, sha))) as archive:
        return {info.filename: info.CRC for info in archive.infolist()}
