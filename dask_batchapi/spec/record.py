"""The job record: what was submitted, once, typed; written at submit and never changed.

Every reader — the driver, the status document, ``resume``, ``retry``, the Kubernetes driver
job — reads a :class:`JobRecord`, and only :meth:`JobRecord.to_dict` / :meth:`JobRecord.from_dict`
know the persisted form (``job.json``). That form is unchanged from the first releases, so
records already in a store still load:

* the Cortex job fields shown in the status document (``job_id``, ``api_name``, ``kind``,
  ``workers``, ``config``, ``timeout``, the dead-letter setting, the source summary, ...);
* ``triggered_by``: ``{"api_name", "job_id"}`` of the job whose handler code submitted this
  one (null otherwise; absent from records written before it existed);
* ``submission``: the submission's own JSON (``Submission.to_dict``), the one source of truth;
  an ``item_list``'s items are stored apart (``items/<n>.json``) and only counted here, except
  in records written before that, which hold them inline.

>>> from dask_batchapi.spec.submission import parse_submission
>>> sub = parse_submission({"item_list": {"items": [1, 2, 3], "batch_size": 2}})
>>> record = JobRecord.new("my-api", sub, cluster="local", archive_sha256="ab" * 32)
>>> JobRecord.from_dict(record.to_dict(), items=[1, 2, 3]).submission == sub
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dask_batchapi.errors import StoreError, SubmissionError
from dask_batchapi.spec.submission import Submission, parse_submission
from dask_batchapi.status import utcnow_iso

KIND = "BatchAPI"
_ID_SPAN = 16**11  # 11 hex digits of inverted milliseconds: ids sort newest first until 2527


def new_job_id(now: float | None = None) -> str:
    """A 16-hex-digit id; lexical order of ids is newest first."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{_ID_SPAN - 1 - millis:011x}{secrets.randbelow(16**5):05x}"


@dataclass(frozen=True)
class JobRecord:
    """One job as submitted (immutable). ``submission`` is the parsed :class:`Submission`."""

    job_id: str
    api_name: str
    submission: Submission
    created_time: str
    cluster: str = "local"
    archive_sha256: str = ""
    spec_sha256: str = ""  # the API spec it was submitted against (safe resume)
    submission_sha256: str = ""  # its submission's JSON, items included (what it ran)
    retry_of: str | None = None
    retry_refs: tuple[dict, ...] | None = None  # a retry job runs exactly these batches
    file_count: int | None = None  # listed sources: how many files matched at submit
    triggered_by: dict | None = None  # {"api_name", "job_id"} of the job whose handler submitted it
    extra: dict = field(default_factory=dict)  # fields of newer writers, kept as they are

    @classmethod
    def new(
        cls, api_name: str, submission: Submission, *, cluster: Any, archive_sha256: str, **kw: Any
    ) -> JobRecord:
        """A fresh record with a new job id (``cluster``: a target string or a live object)."""
        kw.setdefault("submission_sha256", submission_sha256(submission))
        return cls(
            job_id=new_job_id(),
            api_name=api_name,
            submission=submission,
            created_time=utcnow_iso(),
            cluster=cluster if isinstance(cluster, str) else "client",
            archive_sha256=archive_sha256,
            **kw,
        )

    # -- what readers ask -----------------------------------------------------------------
    @property
    def workers(self) -> int:
        return self.submission.workers

    @property
    def max_attempts(self) -> int:
        """Attempts of each batch: ``max_receive_count`` of either dead-letter form."""
        return self.submission.max_receive_count

    @property
    def item_count(self) -> int | None:
        source = self.submission.source
        return len(source.items) if self.submission.source_kind == "item_list" else None

    @property
    def known_batch_count(self) -> int | None:
        """The batch count when it is known before reading any data (not delimited files)."""
        source = self.submission.source
        if self.retry_refs is not None:
            return len(self.retry_refs)
        count = self.item_count if self.item_count is not None else self.file_count
        if count is None or self.submission.source_kind == "delimited_files":
            return None
        return -(-count // source.batch_size)

    def job_fields(self) -> dict:
        """The job's fields as the status document and ``job_spec`` show them (Cortex's)."""
        data = self.to_dict()
        return {k: v for k, v in data.items() if k not in ("submission", "retry_refs")}

    def job_spec(self, total_batch_count: int | None, start_time: str | None) -> dict:
        """What ``Handler.__init__`` receives as ``job_spec``."""
        spec = self.job_fields()
        spec.update(total_batch_count=total_batch_count, start_time=start_time or utcnow_iso())
        return spec

    # -- the persisted form ----------------------------------------------------------------
    def to_dict(self) -> dict:
        """``job.json``: Cortex's job fields, plus the submission's JSON (items stored apart)."""
        sub = self.submission
        data = sub.to_dict()
        summary = {k: v for k, v in data[sub.source_kind].items() if k != "items"}
        if sub.source_kind == "item_list":
            summary["item_count"] = self.item_count
            data["item_list"] = dict(summary)
        if self.file_count is not None:
            summary["file_count"] = self.file_count
        record: dict[str, Any] = {
            "job_id": self.job_id,
            "api_name": self.api_name,
            "kind": KIND,
            "created_time": self.created_time,
            "workers": sub.workers,
            "config": sub.config,
            "timeout": sub.timeout,
            "dead_letter": data.get("dead_letter") or {"max_receive_count": sub.max_receive_count},
            "output": sub.output,
            "batch_timeout": sub.batch_timeout,
            "priority": sub.priority,
            "source": sub.source_kind,
            sub.source_kind: summary,
            "cluster": self.cluster,
            "archive_sha256": self.archive_sha256,
            "spec_sha256": self.spec_sha256,
            "submission_sha256": self.submission_sha256,
            "retry_of": self.retry_of,
            "triggered_by": self.triggered_by,
            **self.extra,
            "submission": data,
        }
        if "sqs_dead_letter_queue" in data:
            record["sqs_dead_letter_queue"] = data["sqs_dead_letter_queue"]
        if "error_budget" in data:
            record["error_budget"] = data["error_budget"]
        if self.retry_refs is not None:
            record["retry_refs"] = list(self.retry_refs)
        return record

    @classmethod
    def from_dict(
        cls, data: Any, items: Sequence | None = None, where: str = "job.json"
    ) -> JobRecord:
        """Load a persisted record. ``items``: an item_list's items when they are stored
        apart (:class:`~dask_batchapi.store.jobstore.StoredItems`); without them a record of
        an item_list holds placeholders of the right count."""
        if not isinstance(data, dict):
            raise StoreError(
                f"{where}: a job record must be a JSON object, got {type(data).__name__}"
            )
        try:
            submission = _stored_submission(data["submission"], items)
            known = {f.name for f in dataclasses.fields(cls)}
            extra = {k: v for k, v in data.items() if k not in known and k not in _DERIVED}
            refs = data.get("retry_refs")
            return cls(
                job_id=str(data["job_id"]),
                api_name=str(data["api_name"]),
                submission=submission,
                created_time=str(data["created_time"]),
                cluster=str(data.get("cluster") or "local"),
                archive_sha256=str(data.get("archive_sha256") or ""),
                spec_sha256=str(data.get("spec_sha256") or ""),
                submission_sha256=str(data.get("submission_sha256") or ""),
                retry_of=data.get("retry_of"),
                retry_refs=tuple(refs) if refs is not None else None,
                file_count=_file_count(data),
                triggered_by=_triggered_by(data.get("triggered_by")),
                extra=extra,
            )
        except KeyError as missing:
            raise StoreError(f"{where}: the job record has no {missing}") from None
        except (SubmissionError, TypeError, ValueError, AttributeError) as error:
            raise StoreError(f"{where}: the job record is not valid: {error}") from None


# keys to_dict derives from the submission and the fields above (not kept in ``extra``)
_DERIVED = {
    "kind",
    "workers",
    "config",
    "timeout",
    "dead_letter",
    "sqs_dead_letter_queue",
    "output",
    "batch_timeout",
    "source",
    "item_list",
    "file_path_lister",
    "delimited_files",
    "error_budget",
    "priority",
}


def submission_sha256(submission: Submission) -> str:
    """sha256 of the submission's canonical JSON (sorted keys), items included.

    The items are hashed 10,000 at a time, so hashing never holds the whole list as text."""
    data = submission.to_dict()
    items = data.get("item_list", {}).pop("items", None) if "item_list" in data else None
    digest = hashlib.sha256(_canonical(data).encode())
    if items is not None:
        it = iter(items)
        while segment := list(itertools.islice(it, _HASH_SEGMENT)):
            digest.update(_canonical(segment).encode())
    return digest.hexdigest()


_HASH_SEGMENT = 10_000


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def _triggered_by(value: Any) -> dict | None:
    if value is None:
        return None
    return {"api_name": str(value["api_name"]), "job_id": str(value["job_id"])}


def _file_count(data: dict) -> int | None:
    summary = data.get(data.get("source") or "", None)
    return summary.get("file_count") if isinstance(summary, dict) else None


def _stored_submission(data: dict, items: Sequence | None) -> Submission:
    source = data.get("item_list")
    if source is None or "items" in source:  # a listed source, or items inline (old records)
        return parse_submission(data)
    count = int(source["item_count"])
    placeholder = {"items": [None], "batch_size": source["batch_size"]}
    if source.get("id_key") is not None:
        placeholder["id_key"] = source["id_key"]
    parsed = parse_submission({**data, "item_list": placeholder})
    stored = items if items is not None else [None] * count
    return dataclasses.replace(parsed, source=dataclasses.replace(parsed.source, items=stored))
