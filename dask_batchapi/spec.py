"""API spec (``batchapi.yaml`` / ``cortex.yaml``) and job submission: parse, validate, defaults.

All validation lives here. A failure is one line naming the file or object, the key path and the
offending value::

    batchapi.yaml: handler.log_level must be one of debug, info, warning, error, got 'loud'
    item_list.batch_size must be an integer >= 1, got 0

Spec problems raise :class:`~dask_batchapi.errors.SpecError` (``HandlerError`` for a missing
handler file); submission problems raise :class:`~dask_batchapi.errors.SubmissionError`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

import yaml

from .errors import HandlerError, SpecError, SubmissionError

logger = logging.getLogger(__name__)

SPEC_FILE_NAMES = ("batchapi.yaml", "batchapi.yml", "cortex.yaml", "cortex.yml")
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_NAME_LENGTH = 42
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_OTHER_KINDS = ("RealtimeAPI", "TaskAPI", "AsyncAPI", "TrafficSplitter")
_UNSUPPORTED_TYPES = ("tensorflow", "onnx")
_QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([KMGTPE]i?|k)?$")
_QUANTITY_SUFFIX = {"k": 1000, **{s: 1000 ** (i + 1) for i, s in enumerate("KMGTPE")}}
_QUANTITY_SUFFIX.update({s + "i": 1024 ** (i + 1) for i, s in enumerate("KMGTPE")})


class _Invalid(SpecError):
    """A validation failure whose message does not name the file or object yet."""


# --------------------------------------------------------------------------- value checkers


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _mapping(value: Any, where: str, *, optional: bool = False) -> dict:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(f"{where} must be a mapping, got {_show(value)}")
    return value


def _keys(data: dict, known: Iterable[str], where: str, label: str = "") -> None:
    """Reject keys not in ``known``; ``label`` prefixes key names (``handler.``)."""
    known = list(known)
    head = f"{where}: " if where else ""
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f", did you mean '{label}{close[0]}'?" if close else ""
            raise _Invalid(f"{head}unknown key '{label}{key}'{hint}")


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Invalid(f"{where} must be an integer >= {minimum}, got {_show(value)}")
    return value


def _positive_number(value: Any, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise _Invalid(f"{where} must be a number > 0, got {_show(value)}")
    return float(value)


def _str(value: Any, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{where} must be a non-empty string, got {_show(value)}")
    return value


def _str_list(value: Any, where: str, *, non_empty: bool = False) -> tuple[str, ...]:
    if value is None and not non_empty:
        return ()
    if not isinstance(value, list) or (non_empty and not value):
        need = "a non-empty list" if non_empty else "a list"
        raise _Invalid(f"{where} must be {need} of strings, got {_show(value)}")
    for i, item in enumerate(value):
        _str(item, f"{where}[{i}]")
    return tuple(value)


def _json_mapping(value: Any, where: str) -> dict:
    value = _mapping(value, where, optional=True)
    try:
        ok = json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise _Invalid(f"{where} must hold only JSON values (string keys), got {_show(value)}")
    return value


def parse_cpu(value: Any, where: str) -> float:
    """Parse a CPU amount in cores: ``1``, ``0.5``, ``"2"`` or millicores like ``"200m"``.

    >>> parse_cpu("200m", "compute.cpu")
    0.2
    """
    text = str(value).strip() if isinstance(value, (str, int, float)) else ""
    scale = 1000 if text.endswith("m") else 1
    try:
        cores = float(Decimal(text.removesuffix("m") if scale > 1 else text) / scale)
    except (InvalidOperation, ValueError):
        cores = -1.0
    if isinstance(value, bool) or not math.isfinite(cores) or cores <= 0:
        raise _Invalid(f"{where} must be a CPU amount > 0 like 1, 0.5 or 200m, got {_show(value)}")
    return cores


def parse_quantity(value: Any, where: str) -> int:
    """Parse a byte quantity: an integer or ``"1Gi"``, ``"200Mi"``, ``"1G"``, ``"500M"``.

    K, M, G, T are powers of 1000; Ki, Mi, Gi, Ti powers of 1024.

    >>> parse_quantity("1Gi", "compute.mem")
    1073741824
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf:
        return int(value)
    match = _QUANTITY_RE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise _Invalid(f"{where} must be a quantity like 1Gi, 512Mi or 1G, got {_show(value)}")
    return int(Decimal(match.group(1)) * _QUANTITY_SUFFIX.get(match.group(2) or "", 1))


# --------------------------------------------------------------------------- API spec


@dataclass(frozen=True)
class Dependencies:
    """Files that list the project's extra dependencies (all optional)."""

    pip: str = "requirements.txt"
    conda: str = "conda-packages.txt"
    shell: str = "dependencies.sh"


@dataclass(frozen=True)
class HandlerSpec:
    """The ``handler:`` (or legacy ``predictor:``) section of an API spec."""

    path: str
    type: str = "python"
    config: dict = field(default_factory=dict)
    python_path: str | None = None
    env: dict = field(default_factory=dict)
    log_level: str = "info"
    dependencies: Dependencies = field(default_factory=Dependencies)
    image: str | None = None
    tensorflow_serving_image: str | None = None
    shm_size: str | None = None
    legacy_predictor: bool = False


@dataclass(frozen=True)
class ComputeSpec:
    """The ``compute:`` section: resources each worker asks for."""

    cpu: float | None = None
    gpu: int = 0
    inf: int = 0
    mem: int | None = None
    node_groups: tuple[str, ...] | None = None


@dataclass(frozen=True)
class APISpec:
    """One Batch API as declared in the project's spec file."""

    name: str
    handler: HandlerSpec
    compute: ComputeSpec = field(default_factory=ComputeSpec)
    kind: str = "BatchAPI"
    endpoint: str | None = None
    spec_file: str = "batchapi.yaml"

    def to_dict(self) -> dict:
        """Return a JSON-able dict; :func:`api_spec_from_dict` turns it back into this spec."""
        data = dataclasses.asdict(self)
        node_groups = data["compute"]["node_groups"]
        data["compute"]["node_groups"] = None if node_groups is None else list(node_groups)
        return data


def api_spec_from_dict(d: dict) -> APISpec:
    """Rebuild an :class:`APISpec` from :meth:`APISpec.to_dict` output (trusted input).

    >>> spec = APISpec(name="my-api", handler=HandlerSpec(path="handler.py"))
    >>> api_spec_from_dict(spec.to_dict()) == spec
    True
    """
    handler = dict(d["handler"], dependencies=Dependencies(**d["handler"]["dependencies"]))
    compute = dict(d["compute"])
    if compute.get("node_groups") is not None:
        compute["node_groups"] = tuple(compute["node_groups"])
    return APISpec(**dict(d, handler=HandlerSpec(**handler), compute=ComputeSpec(**compute)))


def _parse_env(value: Any, where: str) -> dict[str, str]:
    env = {}
    for key, item in _mapping(value, where, optional=True).items():
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, (int, float)):
            item = str(item)
        if not isinstance(key, str) or not isinstance(item, str):
            raise _Invalid(f"{where}.{key} must be a string, got {_show(item)}")
        env[key] = item
    return env


def _parse_dependencies(value: Any, where: str) -> Dependencies:
    data = _mapping(value, where, optional=True)
    fields = [f.name for f in dataclasses.fields(Dependencies)]
    _keys(data, fields, where)
    return Dependencies(**{k: _str(v, f"{where}.{k}") for k, v in data.items()})


def _parse_handler_type(value: Any, where: str) -> str:
    if value in _UNSUPPORTED_TYPES:
        raise _Invalid(f"{where} {value!r} is not supported, use type: python")
    if value != "python":
        raise _Invalid(f"{where} must be python, got {_show(value)}")
    return value


def _parse_handler(data: dict, key: str) -> HandlerSpec:
    known = [f.name for f in dataclasses.fields(HandlerSpec) if f.name != "legacy_predictor"]
    _keys(data, known, "", f"{key}.")
    if data.get("path") is None:
        raise _Invalid(f"{key}.path is required (the handler file, e.g. handler.py)")
    path = _str(data["path"], f"{key}.path")
    if not path.endswith(".py"):
        raise _Invalid(f"{key}.path must name a .py file, got {path!r}")
    level = data.get("log_level", "info")
    if level not in LOG_LEVELS:
        raise _Invalid(
            f"{key}.log_level must be one of {', '.join(LOG_LEVELS)}, got {_show(level)}"
        )
    shm = data.get("shm_size")
    if shm is not None:
        parse_quantity(shm, f"{key}.shm_size")
    return HandlerSpec(
        path=path,
        type=_parse_handler_type(data.get("type", "python"), f"{key}.type"),
        config=_json_mapping(data.get("config"), f"{key}.config"),
        python_path=_str(data.get("python_path"), f"{key}.python_path", optional=True),
        env=_parse_env(data.get("env"), f"{key}.env"),
        log_level=level,
        dependencies=_parse_dependencies(data.get("dependencies"), f"{key}.dependencies"),
        image=_str(data.get("image"), f"{key}.image", optional=True),
        tensorflow_serving_image=_str(
            data.get("tensorflow_serving_image"), f"{key}.tensorflow_serving_image", optional=True
        ),
        shm_size=None if shm is None else str(shm),
        legacy_predictor=key == "predictor",
    )


def _parse_compute(value: Any) -> ComputeSpec:
    data = _mapping(value, "compute", optional=True)
    _keys(data, [f.name for f in dataclasses.fields(ComputeSpec)], "", "compute.")
    cpu, mem, groups = data.get("cpu"), data.get("mem"), data.get("node_groups")
    return ComputeSpec(
        cpu=None if cpu is None else parse_cpu(cpu, "compute.cpu"),
        gpu=_int(data.get("gpu", 0), "compute.gpu", 0),
        inf=_int(data.get("inf", 0), "compute.inf", 0),
        mem=None if mem is None else parse_quantity(mem, "compute.mem"),
        node_groups=None if groups is None else _str_list(groups, "compute.node_groups"),
    )


def _parse_name(value: Any) -> str:
    if value is None:
        raise _Invalid("name is required")
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise _Invalid(
            "name must be lowercase letters, digits and '-', start with a letter and end with"
            f" a letter or digit, got {_show(value)}"
        )
    if len(value) > MAX_NAME_LENGTH:
        raise _Invalid(f"name must be at most {MAX_NAME_LENGTH} characters, got {_show(value)}")
    return value


def _parse_kind(value: Any) -> str:
    if value in _OTHER_KINDS:
        raise _Invalid(f"kind {value} is not supported, only kind: BatchAPI")
    if value != "BatchAPI":
        raise _Invalid(f"kind must be BatchAPI, got {_show(value)}")
    return value


def _parse_networking(value: Any) -> str | None:
    data = _mapping(value, "networking", optional=True)
    _keys(data, ["endpoint"], "", "networking.")
    return _str(data.get("endpoint"), "networking.endpoint", optional=True)


def _parse_one_spec(data: Any, spec_file: str) -> APISpec:
    data = _mapping(data, "an API spec")
    _keys(data, ["name", "kind", "handler", "predictor", "compute", "networking"], "")
    if "handler" in data and "predictor" in data:
        raise _Invalid("handler and predictor are both given; use handler only")
    key = "predictor" if "predictor" in data else "handler"
    if data.get(key) is None:
        raise _Invalid("handler is required (a mapping with at least path)")
    return APISpec(  # keyword arguments are checked in this order
        name=_parse_name(data.get("name")),
        kind=_parse_kind(data.get("kind", "BatchAPI")),
        handler=_parse_handler(_mapping(data[key], key), key),
        compute=_parse_compute(data.get("compute")),
        endpoint=_parse_networking(data.get("networking")),
        spec_file=spec_file,
    )


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f" at line {mark.line + 1}" if mark else ""
        problem = error.problem or error.context or "malformed"
        raise SpecError(_one_line(f"{source}: invalid YAML{line}: {problem}")) from None
    except yaml.YAMLError as error:
        raise SpecError(_one_line(f"{source}: invalid YAML: {error}")) from None


def parse_api_specs(text: str, source: str = "batchapi.yaml") -> list[APISpec]:
    """Parse a spec file's text: one mapping, or a list of mappings like Cortex.

    >>> [s.name for s in parse_api_specs("name: my-api\\nhandler: {path: handler.py}")]
    ['my-api']
    """
    data = _load_yaml(text, source)
    if data is None:
        raise SpecError(f"{source} is empty; it must hold an API spec with name and handler")
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise SpecError(f"{source} holds an empty list; it must hold at least one API spec")
    specs = []
    for i, entry in enumerate(entries):
        where = f"{source}[{i}]" if len(entries) > 1 else source
        try:
            specs.append(_parse_one_spec(entry, Path(source).name))
        except _Invalid as error:
            raise SpecError(f"{where}: {error}") from None
    _check_unique_names(specs, source)
    return specs


def _check_unique_names(specs: list[APISpec], source: str) -> None:
    seen = set()
    for spec in specs:
        if spec.name in seen:
            raise SpecError(f"{source}: API name {spec.name!r} is declared more than once")
        seen.add(spec.name)


def _one_line(text: str) -> str:
    """Collapse whitespace (newlines included) so that a message fits on one line."""
    return " ".join(str(text).split())


def find_spec_file(project_dir: str | Path) -> Path:
    """Return the project's spec file: ``batchapi.yaml`` or ``cortex.yaml`` (or ``.yml``).

    >>> find_spec_file("my-api")  # doctest: +SKIP
    PosixPath('my-api/batchapi.yaml')
    """
    root = Path(project_dir)
    if not root.is_dir():
        raise SpecError(f"project directory {str(root)!r} not found")
    found = [root / name for name in SPEC_FILE_NAMES if (root / name).is_file()]
    if not found:
        raise SpecError(f"no batchapi.yaml or cortex.yaml in {root}")
    if len(found) > 1:
        names = " and ".join(p.name for p in found)
        raise SpecError(f"both {names} in {root}; keep only one spec file")
    return found[0]


def load_api_specs(project_dir: str | Path) -> list[APISpec]:
    """Find, read and validate the project's spec file, and check the handler files exist.

    >>> load_api_specs("my-api")  # doctest: +SKIP
    [APISpec(name='my-api', ...)]
    """
    root = Path(project_dir)
    path = find_spec_file(root)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(_one_line(f"{path.name}: cannot be read: {error}")) from None
    specs = parse_api_specs(text, path.name)
    for spec in specs:
        _check_handler_files(root, spec)
    return specs


def _inside(root: Path, relative: str) -> Path | None:
    target = (root / relative).resolve()
    return target if target.is_relative_to(root.resolve()) else None


def _check_handler_files(root: Path, spec: APISpec) -> None:
    key = "predictor" if spec.handler.legacy_predictor else "handler"
    handler_file = _inside(root, spec.handler.path)
    if handler_file is None or not handler_file.is_file():
        raise HandlerError(
            f"{spec.spec_file}: {key}.path {spec.handler.path!r} not found in {root}"
        )
    python_path = spec.handler.python_path
    if python_path is not None:
        target = _inside(root, python_path)
        if target is None or not target.is_dir():
            raise SpecError(
                f"{spec.spec_file}: {key}.python_path {python_path!r} is not a directory in {root}"
            )


# --------------------------------------------------------------------------- submission


@dataclass(frozen=True)
class ItemList:
    """``item_list``: the items themselves, cut into batches of ``batch_size``."""

    items: list
    batch_size: int


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


_SOURCES = {
    "item_list": ItemList,
    "file_path_lister": FilePathLister,
    "delimited_files": DelimitedFiles,
}
_SUBMISSION_KEYS = [
    *_SOURCES,
    *("workers", "config", "timeout", "dead_letter", "sqs_dead_letter_queue"),
    *("output", "batch_timeout", "node_groups"),
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

    @property
    def source_kind(self) -> str:
        """``"item_list"``, ``"file_path_lister"`` or ``"delimited_files"``."""
        return next(k for k, cls in _SOURCES.items() if isinstance(self.source, cls))

    def to_dict(self) -> dict:
        """Return the submission as Cortex's JSON (what :func:`parse_submission` reads)."""
        source = dataclasses.asdict(self.source)
        source = {k: list(v) if isinstance(v, tuple) else v for k, v in source.items()}
        data: dict[str, Any] = {self.source_kind: source, "workers": self.workers}
        data["config"] = copy.deepcopy(self.config)
        if self.dead_letter_arn is None:
            data["dead_letter"] = {"max_receive_count": self.max_receive_count}
        else:
            queue = {"arn": self.dead_letter_arn, "max_receive_count": self.max_receive_count}
            data["sqs_dead_letter_queue"] = queue
        extras = {"timeout": self.timeout, "output": self.output}
        extras["batch_timeout"] = self.batch_timeout
        data.update({k: v for k, v in extras.items() if v is not None})
        return data


def _parse_source(kind: str, value: Any) -> ItemList | FilePathLister | DelimitedFiles:
    data = _mapping(value, kind)
    cls = _SOURCES[kind]
    _keys(data, [f.name for f in dataclasses.fields(cls)], kind)
    if "batch_size" not in data:
        raise _Invalid(f"{kind}.batch_size is required")
    batch_size = _int(data["batch_size"], f"{kind}.batch_size", 1)
    if cls is ItemList:
        items = data.get("items")
        if not isinstance(items, list) or not items:
            raise _Invalid(f"item_list.items must be a non-empty list, got {_show(items)}")
        return ItemList(items=list(items), batch_size=batch_size)
    return cls(
        s3_paths=_str_list(data.get("s3_paths"), f"{kind}.s3_paths", non_empty=True),
        batch_size=batch_size,
        includes=_str_list(data.get("includes"), f"{kind}.includes"),
        excludes=_str_list(data.get("excludes"), f"{kind}.excludes"),
    )


def _parse_dead_letter(data: dict, where: str) -> tuple[int, str | None]:
    if "dead_letter" in data and "sqs_dead_letter_queue" in data:
        raise _Invalid(f"{where} has both dead_letter and sqs_dead_letter_queue; use one")
    key = "sqs_dead_letter_queue" if "sqs_dead_letter_queue" in data else "dead_letter"
    if data.get(key) is None:
        return 1, None
    queue = _mapping(data[key], key)
    names = ["max_receive_count"] if key == "dead_letter" else ["arn", "max_receive_count"]
    _keys(queue, names, key)
    for name in names:
        if name not in queue:
            raise _Invalid(f"{key}.{name} is required")
    arn = _str(queue["arn"], f"{key}.arn") if key == "sqs_dead_letter_queue" else None
    return _int(queue["max_receive_count"], f"{key}.max_receive_count", 1), arn


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
    except _Invalid as error:
        raise SubmissionError(str(error)) from None


def _parse_submission(data: Any, where: str) -> Submission:
    if not isinstance(data, dict):
        raise _Invalid(f"{where} must be a JSON object, got {_show(data)}")
    _keys(data, _SUBMISSION_KEYS, where)
    kinds = [k for k in _SOURCES if k in data]
    if len(kinds) != 1:
        got = f", got {' and '.join(kinds)}" if kinds else ""
        raise _Invalid(f"{where} must have one of {', '.join(_SOURCES)}{got}")
    _str_list(data.get("node_groups"), "node_groups")
    max_receive_count, arn = _parse_dead_letter(data, where)
    return Submission(
        source=_parse_source(kinds[0], data[kinds[0]]),
        workers=_int(data.get("workers", 1), "workers", 1),
        config=_json_mapping(data.get("config"), "config"),
        timeout=_optional(data, "timeout", _positive_number),
        max_receive_count=max_receive_count,
        dead_letter_arn=arn,
        output=_optional(data, "output", _str),
        batch_timeout=_optional(data, "batch_timeout", _positive_number),
    )


def submission_from_dict(d: dict) -> Submission:
    """Rebuild a :class:`Submission` from :meth:`Submission.to_dict` output."""
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
        raise SubmissionError(_one_line(f"cannot read submission file {name!r}: {error}")) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"{name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        raise SubmissionError(msg) from None
    return parse_submission(data)


def deep_merge(base: dict, override: dict) -> dict:
    """Return a new dict: ``base`` updated by ``override``, nested dicts merged recursively.

    Neither input is mutated; ``override`` wins on conflicts.

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
