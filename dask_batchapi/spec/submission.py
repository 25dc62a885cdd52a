"""Job submission (Cortex's job JSON, plus ``output`` and ``batch_timeout``): parse and validate.

A failure raises :class:`~dask_batchapi.errors.SubmissionError`, one line naming the key path and
the offending value::

    item_list.batch_size must be an integer >= 1, got 0
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dask_batchapi.errors import LimitError, SubmissionError
from dask_batchapi.spec._validate import (
    Invalid,
    check_keys,
    integer,
    json_mapping,
    mapping,
    one_line,
    positive_number,
    show,
    str_list,
    string,
)
from dask_batchapi.spec.failures import (
    ErrorBudget,
    check_item_ids,
    parse_error_budget,
    parse_isolate_items,
)
from dask_batchapi.spec.limits import check_depth, json_problem, short_reason

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemList:
    """``item_list``: the items themselves, cut into batches of ``batch_size``."""

    items: list
    batch_size: int
    id_key: str | None = None  # our extension: the field of each (object) item that is its id


@dataclass(frozen=True)
class FilePathLister:
    """``file_path_lister``: each batch is a list of file URLs matching the prefixes."""

    s3_paths: tuple[str, ...]
    batch_size: int
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DelimitedFiles:
    """``delimited_files``: JSON values read from the matching files, cut into batches."""

    s3_paths: tuple[str, ...]
    batch_size: int
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    id_key: str | None = None


_SOURCES = {
    "item_list": ItemList,
    "file_path_lister": FilePathLister,
    "delimited_files": DelimitedFiles,
}
_SUBMISSION_KEYS = [
    *_SOURCES,
    *("workers", "config", "timeout", "dead_letter", "sqs_dead_letter_queue"),
    *("output", "batch_timeout", "node_groups", "error_budget", "priority"),
]


@dataclass(frozen=True)
class Submission:
    """A validated job submission (Cortex's JSON, plus ``output`` and ``batch_timeout``)."""

    source: ItemList | FilePathLister | DelimitedFiles
    workers: int = 1
    config: dict = field(default_factory=dict)
    timeout: float | None = None
    max_receive_count: int = 1
    dead_letter_arn: str | None = None
    output: str | None = None
    batch_timeout: float | None = None
    priority: int = 0  # our extension: queued jobs get free workers higher first, then oldest
    isolate_items: bool | None = None  # None: the config's batchapi.isolate-items
    error_budget: ErrorBudget | None = None

    @property
    def id_key(self) -> str | None:
        """The items' id field (``item_list.id_key`` / ``delimited_files.id_key``), if any."""
        return getattr(self.source, "id_key", None)

    @property
    def source_kind(self) -> str:
        """``"item_list"``, ``"file_path_lister"`` or ``"delimited_files"``."""
        return next(k for k, cls in _SOURCES.items() if isinstance(self.source, cls))

    def to_dict(self) -> dict:
        """Return the submission as Cortex's JSON (what :func:`parse_submission` reads)."""
        # shallow on purpose: asdict() would deep-copy every item of a large item_list
        fields = dataclasses.fields(self.source)
        source = {f.name: getattr(self.source, f.name) for f in fields}
        source = {k: list(v) if isinstance(v, tuple) else v for k, v in source.items()}
        if source.get("id_key") is None:
            source.pop("id_key", None)
        data: dict[str, Any] = {self.source_kind: source, "workers": self.workers}
        data["config"] = copy.deepcopy(self.config)
        queue: dict[str, Any] = {"max_receive_count": self.max_receive_count}
        if self.isolate_items is not None:
            queue["isolate_items"] = self.isolate_items
        if self.dead_letter_arn is None:
            data["dead_letter"] = queue
        else:
            data["sqs_dead_letter_queue"] = {"arn": self.dead_letter_arn, **queue}
        extras = {"timeout": self.timeout, "output": self.output}
        extras["batch_timeout"] = self.batch_timeout
        if self.error_budget is not None:
            extras["error_budget"] = self.error_budget.to_dict()
        data.update({k: v for k, v in extras.items() if v is not None})
        if self.priority:
            data["priority"] = self.priority
        return data


def _parse_source(kind: str, value: Any) -> ItemList | FilePathLister | DelimitedFiles:
    data = mapping(value, kind)
    cls = _SOURCES[kind]
    check_keys(data, [f.name for f in dataclasses.fields(cls)], kind)
    if "batch_size" not in data:
        raise Invalid(f"{kind}.batch_size is required")
    batch_size = integer(data["batch_size"], f"{kind}.batch_size", 1)
    ids = {} if data.get("id_key") is None else {"id_key": string(data["id_key"], f"{kind}.id_key")}
    if cls is ItemList:
        items = data.get("items")
        if not isinstance(items, list) or not items:
            raise Invalid(f"item_list.items must be a non-empty list, got {show(items)}")
        problem = json_problem(items, "item_list.items")
        if problem:  # never turned into something else silently (a set into its repr)
            raise Invalid(f"{problem}; items must be JSON values")
        return ItemList(items=items, batch_size=batch_size, **ids)  # not copied: stored at submit
    return cls(
        s3_paths=str_list(data.get("s3_paths"), f"{kind}.s3_paths", non_empty=True),
        batch_size=batch_size,
        includes=str_list(data.get("includes"), f"{kind}.includes"),
        excludes=str_list(data.get("excludes"), f"{kind}.excludes"),
        **ids,
    )


def _parse_dead_letter(data: dict, where: str) -> tuple[int, str | None, bool | None]:
    if "dead_letter" in data and "sqs_dead_letter_queue" in data:
        raise Invalid(f"{where} has both dead_letter and sqs_dead_letter_queue; use one")
    key = "sqs_dead_letter_queue" if "sqs_dead_letter_queue" in data else "dead_letter"
    if data.get(key) is None:
        return 1, None, None
    queue = mapping(data[key], key)
    names = ["max_receive_count"] if key == "dead_letter" else ["arn", "max_receive_count"]
    check_keys(queue, [*names, "isolate_items"], key)
    for name in names:
        if name not in queue:
            raise Invalid(f"{key}.{name} is required")
    arn = string(queue["arn"], f"{key}.arn") if key == "sqs_dead_letter_queue" else None
    count = integer(queue["max_receive_count"], f"{key}.max_receive_count", 1)
    return count, arn, parse_isolate_items(queue, key)


def _optional(data: dict, key: str, check: Any) -> Any:
    return None if data.get(key) is None else check(data[key], key)


def parse_submission(data: Any, where: str = "submission") -> Submission:
    """Validate a job submission (parsed JSON) and return a :class:`Submission`.

    ``where`` names the top-level object in messages; nested keys are named by key path.

    >>> parse_submission({"item_list": {"items": [1, 2, 3], "batch_size": 2}}).workers
    1
    """
    try:
        return _parse_submission(data, where)
    except Invalid as error:
        raise SubmissionError(str(error)) from None


def _parse_submission(data: Any, where: str) -> Submission:
    if not isinstance(data, dict):
        raise Invalid(f"{where} must be a JSON object, got {show(data)}")
    check_keys(data, _SUBMISSION_KEYS, where)
    kinds = [k for k in _SOURCES if k in data]
    if len(kinds) != 1:
        got = f", got {' and '.join(kinds)}" if kinds else ""
        raise Invalid(f"{where} must have one of {', '.join(_SOURCES)}{got}")
    str_list(data.get("node_groups"), "node_groups")
    max_receive_count, arn, isolate = _parse_dead_letter(data, where)
    return Submission(
        source=_parse_source(kinds[0], data[kinds[0]]),
        workers=integer(data.get("workers", 1), "workers", 1),
        config=json_mapping(data.get("config"), "config"),
        timeout=_optional(data, "timeout", positive_number),
        max_receive_count=max_receive_count,
        dead_letter_arn=arn,
        output=_optional(data, "output", string),
        batch_timeout=_optional(data, "batch_timeout", positive_number),
        isolate_items=isolate,
        error_budget=_optional(data, "error_budget", lambda v, _: parse_error_budget(v)),
        priority=_priority(data.get("priority", 0)),
    )


def check_new_items(submission: Submission) -> None:
    """What only a new submission's items can tell (not rechecked when a record is reloaded,
    whose items are read lazily): with ``item_list.id_key``, every item holds its id."""
    if submission.source_kind == "item_list":
        try:
            check_item_ids(submission.source.items, submission.id_key)
        except Invalid as error:
            raise SubmissionError(str(error)) from None


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"priority must be an integer (higher runs first), got {show(value)}")
    return value


def submission_from_dict(d: dict) -> Submission:
    """Rebuild a :class:`Submission` from :meth:`Submission.to_dict` output.

    >>> sub = parse_submission({"item_list": {"items": [1], "batch_size": 1}})
    >>> submission_from_dict(sub.to_dict()) == sub
    True
    """
    return parse_submission(d)


def load_submission(path_or_dash: str, stdin: IO[str] | None = None) -> Submission:
    """Read and validate a submission JSON file; ``"-"`` reads ``stdin`` (default sys.stdin).

    >>> load_submission("submission.json")  # doctest: +SKIP
    Submission(source=ItemList(...), workers=1, ...)
    """
    name = "stdin" if path_or_dash == "-" else str(path_or_dash)
    try:
        text = (stdin or sys.stdin).read() if path_or_dash == "-" else Path(name).read_text()
    except FileNotFoundError:
        raise SubmissionError(f"submission file {name!r} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SubmissionError(one_line(f"cannot read submission file {name!r}: {error}")) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"{name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        raise SubmissionError(msg) from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise SubmissionError(
            one_line(f"{name}: a number over the limit: {short_reason(e)}")
        ) from None
    except RecursionError:
        raise LimitError(f"{name}: nested too deep; refused") from None
    check_depth(data, name)
    return parse_submission(data)


def deep_merge(base: dict, override: dict) -> dict:
    """Return a new dict: ``base`` updated by ``override``, nested dicts merged recursively.

    Neither input is mutated; ``override`` wins on conflicts. This is how a job's ``config``
    overrides the handler's ``config`` from the API spec.

    >>> deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}})
    {'a': {'x': 1, 'y': 3}}
    """
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
