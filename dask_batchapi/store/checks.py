"""What a store object must look like before anyone uses it: one corrupted file is one clear
error naming that file, never a traceback and never a broken listing of the other jobs."""

from __future__ import annotations

from typing import Any

from dask_batchapi.errors import StoreError
from dask_batchapi.status import JobStatus

_INTS = ("run", "succeeded", "failed", "dead_lettered", "lost", "attempts_timed", "in_flight")
_INTS += ("workers_running",)
_NUMBERS = ("batch_seconds",)
_OPTIONAL_NUMBERS = ("heartbeat", "total_batch_count")
_OPTIONAL_TEXT = ("start_time", "end_time", "dashboard_link")
_OPTIONAL_DICTS = ("error", "driver")
_API_KEYS = ("name", "spec", "signature", "archive_sha256")


def _corrupted(where: str, why: str) -> StoreError:
    return StoreError(f"{where} is corrupted ({why}); delete the job or restore the file")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_state(data: Any, where: str) -> dict | None:
    """``data`` (a parsed ``state.json``) if it is a job state; StoreError naming ``where``."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _corrupted(where, f"a {type(data).__name__}, not an object")
    status = data.get("status", JobStatus.PENDING.value)
    if status not in {s.value for s in JobStatus}:
        raise _corrupted(where, f"unknown status {status!r}")
    for key in _INTS:
        if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool)):
            raise _corrupted(where, f"{key} must be an integer, got {data[key]!r}")
    for key in _NUMBERS:
        if key in data and not _is_number(data[key]):
            raise _corrupted(where, f"{key} must be a number, got {data[key]!r}")
    for key in _OPTIONAL_NUMBERS:
        if data.get(key) is not None and not _is_number(data[key]):
            raise _corrupted(where, f"{key} must be a number, got {data[key]!r}")
    for key in _OPTIONAL_TEXT:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise _corrupted(where, f"{key} must be text, got {data[key]!r}")
    for key in _OPTIONAL_DICTS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise _corrupted(where, f"{key} must be an object, got {data[key]!r}")
    return data


def check_api(data: Any, where: str) -> dict:
    """``data`` (a parsed ``api.json``) if it is an API record; StoreError naming ``where``."""
    if not isinstance(data, dict):
        raise StoreError(
            f"{where} is corrupted (a {type(data).__name__}, not an object); deploy the API again"
        )
    missing = [k for k in _API_KEYS if k not in data]
    if missing or not isinstance(data.get("spec"), dict):
        why = f"missing {', '.join(missing)}" if missing else "spec is not an object"
        raise StoreError(f"{where} is corrupted ({why}); deploy the API again")
    return data


def unreadable_job(api_name: str, job_id: str, error: Exception) -> dict:
    """A listing's row for a job whose files cannot be read: marked, with the reason."""
    return {
        "job_id": job_id,
        "api_name": api_name,
        "status": "unreadable",
        "unreadable": True,
        "error": {"type": type(error).__name__, "message": str(error), "reason": "store"},
        "start_time": None,
        "end_time": None,
        "total_batch_count": None,
        "batch_metrics": {"succeeded": 0, "failed": 0, "dead_lettered": 0, "lost": 0},
        "interrupted": False,
    }
