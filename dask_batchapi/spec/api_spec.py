"""API spec (``batchapi.yaml`` / ``cortex.yaml``): parse, validate, defaults.

A failure is one line naming the file, the key path and the offending value::

    batchapi.yaml: handler.log_level must be one of debug, info, warning, error, got 'loud'
    batchapi.yaml: duplicate key 'handler' at line 7

Problems raise :class:`~dask_batchapi.errors.SpecError` (``HandlerError`` for a missing handler
file). Job submissions live in :mod:`dask_batchapi.spec.submission`; their names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dask_batchapi.errors import HandlerError, SpecError
from dask_batchapi.spec._validate import (
    Invalid,
    check_keys,
    integer,
    json_mapping,
    mapping,
    one_line,
    parse_cpu,
    parse_quantity,
    show,
    str_list,
    string,
)
from dask_batchapi.spec.limits import load_limited
from dask_batchapi.spec.submission import (
    DelimitedFiles,
    FilePathLister,
    ItemList,
    Submission,
    deep_merge,
    load_submission,
    parse_submission,
    submission_from_dict,
)

__all__ = [
    "LOG_LEVELS",
    "MAX_NAME_LENGTH",
    "SPEC_FILE_NAMES",
    "APISpec",
    "ComputeSpec",
    "DelimitedFiles",
    "Dependencies",
    "FilePathLister",
    "HandlerSpec",
    "ItemList",
    "Submission",
    "api_spec_from_dict",
    "deep_merge",
    "find_spec_file",
    "load_api_specs",
    "load_submission",
    "parse_api_specs",
    "parse_cpu",
    "parse_quantity",
    "parse_submission",
    "submission_from_dict",
]

logger = logging.getLogger(__name__)

SPEC_FILE_NAMES = ("batchapi.yaml", "batchapi.yml", "cortex.yaml", "cortex.yml")
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_NAME_LENGTH = 42
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_OTHER_KINDS = ("RealtimeAPI", "TaskAPI", "AsyncAPI", "TrafficSplitter")
_UNSUPPORTED_TYPES = ("tensorflow", "onnx")
_MERGE_TAG = "tag:yaml.org,2002:merge"


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
    for key, item in mapping(value, where, optional=True).items():
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, (int, float)):
            item = str(item)
        if not isinstance(key, str) or not isinstance(item, str):
            raise Invalid(f"{where}.{key} must be a string, got {show(item)}")
        env[key] = item
    return env


def _parse_dependencies(value: Any, where: str) -> Dependencies:
    data = mapping(value, where, optional=True)
    fields = [f.name for f in dataclasses.fields(Dependencies)]
    check_keys(data, fields, where)
    return Dependencies(**{k: string(v, f"{where}.{k}") for k, v in data.items()})


def _parse_handler_type(value: Any, where: str) -> str:
    if value in _UNSUPPORTED_TYPES:
        raise Invalid(f"{where} {value!r} is not supported, use type: python")
    if value != "python":
        raise Invalid(f"{where} must be python, got {show(value)}")
    return value


def _parse_handler(data: dict, key: str) -> HandlerSpec:
    known = [f.name for f in dataclasses.fields(HandlerSpec) if f.name != "legacy_predictor"]
    check_keys(data, known, "", f"{key}.")
    if data.get("path") is None:
        raise Invalid(f"{key}.path is required (the handler file, e.g. handler.py)")
    path = string(data["path"], f"{key}.path")
    if not path.endswith(".py"):
        raise Invalid(f"{key}.path must name a .py file, got {path!r}")
    level = data.get("log_level", "info")
    if level not in LOG_LEVELS:
        raise Invalid(f"{key}.log_level must be one of {', '.join(LOG_LEVELS)}, got {show(level)}")
    shm = data.get("shm_size")
    if shm is not None:
        parse_quantity(shm, f"{key}.shm_size")
    return HandlerSpec(
        path=path,
        type=_parse_handler_type(data.get("type", "python"), f"{key}.type"),
        config=json_mapping(data.get("config"), f"{key}.config"),
        python_path=string(data.get("python_path"), f"{key}.python_path", optional=True),
        env=_parse_env(data.get("env"), f"{key}.env"),
        log_level=level,
        dependencies=_parse_dependencies(data.get("dependencies"), f"{key}.dependencies"),
        image=string(data.get("image"), f"{key}.image", optional=True),
        tensorflow_serving_image=string(
            data.get("tensorflow_serving_image"), f"{key}.tensorflow_serving_image", optional=True
        ),
        shm_size=None if shm is None else str(shm),
        legacy_predictor=key == "predictor",
    )


def _parse_compute(value: Any) -> ComputeSpec:
    data = mapping(value, "compute", optional=True)
    check_keys(data, [f.name for f in dataclasses.fields(ComputeSpec)], "", "compute.")
    cpu, mem, groups = data.get("cpu"), data.get("mem"), data.get("node_groups")
    return ComputeSpec(
        cpu=None if cpu is None else parse_cpu(cpu, "compute.cpu"),
        gpu=integer(data.get("gpu", 0), "compute.gpu", 0),
        inf=integer(data.get("inf", 0), "compute.inf", 0),
        mem=None if mem is None else parse_quantity(mem, "compute.mem"),
        node_groups=None if groups is None else str_list(groups, "compute.node_groups"),
    )


def _parse_name(value: Any) -> str:
    if value is None:
        raise Invalid("name is required")
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise Invalid(
            "name must be lowercase letters, digits and '-', start with a letter and end with"
            f" a letter or digit, got {show(value)}"
        )
    if len(value) > MAX_NAME_LENGTH:
        raise Invalid(f"name must be at most {MAX_NAME_LENGTH} characters, got {show(value)}")
    return value


def _parse_kind(value: Any) -> str:
    if value in _OTHER_KINDS:
        raise Invalid(f"kind {value} is not supported, only kind: BatchAPI")
    if value != "BatchAPI":
        raise Invalid(f"kind must be BatchAPI, got {show(value)}")
    return value


def _parse_networking(value: Any) -> str | None:
    data = mapping(value, "networking", optional=True)
    check_keys(data, ["endpoint"], "", "networking.")
    return string(data.get("endpoint"), "networking.endpoint", optional=True)


def _parse_one_spec(data: Any, spec_file: str) -> APISpec:
    data = mapping(data, "an API spec")
    check_keys(data, ["name", "kind", "handler", "predictor", "compute", "networking"], "")
    if "handler" in data and "predictor" in data:
        raise Invalid("handler and predictor are both given; use handler only")
    key = "predictor" if "predictor" in data else "handler"
    if data.get(key) is None:
        raise Invalid("handler is required (a mapping with at least path)")
    return APISpec(  # keyword arguments are checked in this order
        name=_parse_name(data.get("name")),
        kind=_parse_kind(data.get("kind", "BatchAPI")),
        handler=_parse_handler(mapping(data[key], key), key),
        compute=_parse_compute(data.get("compute")),
        endpoint=_parse_networking(data.get("networking")),
        spec_file=spec_file,
    )


class _DuplicateKey(yaml.YAMLError):
    """A mapping repeats a key; the message names the key and the line of the repeat."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {show(key)} at line {line}")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a repeated key (PyYAML silently keeps the last one)."""

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        # Checked when composed, not constructed: by construction time PyYAML's merge-key
        # flattening may have copied ``<<: *base`` keys into the node, and overriding them is fine.
        node = super().compose_mapping_node(anchor)
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # a non-scalar key is unhashable; the constructor reports it
            key = self.construct_object(key_node)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return node


def _load_yaml(text: str, source: str) -> Any:
    try:  # safe: _StrictLoader is a SafeLoader; within the limits of spec.limits
        return load_limited(text, source, _StrictLoader)
    except _DuplicateKey as error:
        raise SpecError(f"{source}: {error}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f" at line {mark.line + 1}" if mark else ""
        problem = error.problem or error.context or "malformed"
        raise SpecError(one_line(f"{source}: invalid YAML{line}: {problem}")) from None
    except yaml.YAMLError as error:
        raise SpecError(one_line(f"{source}: invalid YAML: {error}")) from None


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
        except Invalid as error:
            raise SpecError(f"{where}: {error}") from None
    _check_unique_names(specs, source)
    return specs


def _check_unique_names(specs: list[APISpec], source: str) -> None:
    seen = set()
    for spec in specs:
        if spec.name in seen:
            raise SpecError(f"{source}: API name {spec.name!r} is declared more than once")
        seen.add(spec.name)


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
        raise SpecError(one_line(f"{path.name}: cannot be read: {error}")) from None
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
