"""API spec: parsing, defaults, spec files, and the exact one-line error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dask_batchapi.errors import HandlerError, SpecError
from dask_batchapi.spec.api_spec import (
    SPEC_FILE_NAMES,
    APISpec,
    ComputeSpec,
    Dependencies,
    HandlerSpec,
    api_spec_from_dict,
    find_spec_file,
    load_api_specs,
    parse_api_specs,
    parse_cpu,
    parse_quantity,
)

MINIMAL = "name: my-api\nkind: BatchAPI\nhandler:\n  path: handler.py\n"


def error_of(exc_type: type[Exception], func, *args, **kwargs) -> str:
    """Call ``func`` expecting ``exc_type``; return its message, checked to be one line."""
    with pytest.raises(exc_type) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def spec_error(text: str, source: str = "batchapi.yaml") -> str:
    return error_of(SpecError, parse_api_specs, text, source)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


# --------------------------------------------------------------------------- API spec: values


def test_minimal_spec_gets_defaults():
    [spec] = parse_api_specs(MINIMAL)
    assert spec == APISpec(name="my-api", handler=HandlerSpec(path="handler.py"))
    assert spec.handler.dependencies == Dependencies()
    assert spec.compute == ComputeSpec(cpu=None, gpu=0, inf=0, mem=None, node_groups=None)
    assert spec.kind == "BatchAPI" and spec.spec_file == "batchapi.yaml"


def test_full_spec():
    text = """
name: full
kind: BatchAPI
handler:
  type: python
  path: src/handler.py
  config: {model: s3://m/model.bin, nested: {a: 1}}
  python_path: src
  env: {A: x, NUM: 3, RATE: 0.5, FLAG: true}
  log_level: debug
  dependencies: {pip: reqs.txt, conda: conda.txt, shell: setup.sh}
  image: my/image:1
  tensorflow_serving_image: tf/serving
  shm_size: 1Gi
compute: {cpu: 200m, gpu: 1, inf: 0, mem: 1Gi, node_groups: [gpu-pool]}
networking: {endpoint: /full}
"""
    [spec] = parse_api_specs(text, "cortex.yaml")
    h = spec.handler
    assert (h.path, h.python_path, h.log_level) == ("src/handler.py", "src", "debug")
    assert h.config == {"model": "s3://m/model.bin", "nested": {"a": 1}}
    assert h.env == {"A": "x", "NUM": "3", "RATE": "0.5", "FLAG": "true"}
    assert h.dependencies == Dependencies(pip="reqs.txt", conda="conda.txt", shell="setup.sh")
    assert (h.image, h.tensorflow_serving_image, h.shm_size) == ("my/image:1", "tf/serving", "1Gi")
    assert spec.compute == ComputeSpec(cpu=0.2, gpu=1, inf=0, mem=2**30, node_groups=("gpu-pool",))
    assert spec.endpoint == "/full" and spec.spec_file == "cortex.yaml"


def test_list_of_two_specs():
    text = "- name: one\n  handler: {path: a.py}\n- name: two\n  handler: {path: b.py}\n"
    specs = parse_api_specs(text)
    assert [(s.name, s.handler.path) for s in specs] == [("one", "a.py"), ("two", "b.py")]


def test_list_entry_errors_name_the_entry():
    text = "- name: one\n  handler: {path: a.py}\n- name: Two\n  handler: {path: b.py}\n"
    assert spec_error(text).startswith("batchapi.yaml[1]: name must be lowercase letters")


def test_duplicate_names_in_one_file():
    text = "- name: one\n  handler: {path: a.py}\n- name: one\n  handler: {path: b.py}\n"
    assert spec_error(text) == "batchapi.yaml: API name 'one' is declared more than once"


def test_legacy_predictor_key():
    [spec] = parse_api_specs("name: old\npredictor: {type: python, path: predictor.py}\n")
    assert spec.handler.legacy_predictor and spec.handler.path == "predictor.py"


def test_handler_and_predictor_both():
    text = MINIMAL + "predictor: {path: p.py}\n"
    msg = "batchapi.yaml: handler and predictor are both given; use handler only"
    assert spec_error(text) == msg


@pytest.mark.parametrize(
    ("cpu", "cores"), [(1, 1.0), (0.5, 0.5), ("200m", 0.2), ("2", 2.0), ("1500m", 1.5)]
)
def test_parse_cpu(cpu, cores):
    assert parse_cpu(cpu, "compute.cpu") == pytest.approx(cores)


@pytest.mark.parametrize("cpu", ["abc", 0, -1, "0m", True, "1x", [1]])
def test_parse_cpu_rejects(cpu):
    msg = error_of(SpecError, parse_cpu, cpu, "compute.cpu")
    assert msg == f"compute.cpu must be a CPU amount > 0 like 1, 0.5 or 200m, got {cpu!r}"


@pytest.mark.parametrize(
    ("mem", "size"),
    [
        (1024, 1024),
        ("1Gi", 2**30),
        ("200Mi", 200 * 2**20),
        ("1G", 10**9),
        ("500M", 500 * 10**6),
        ("1K", 1000),
        ("1Ki", 1024),
        ("1T", 10**12),
        ("1Ti", 2**40),
        ("1.5Gi", 3 * 2**29),
        ("42", 42),
    ],
)
def test_parse_quantity(mem, size):
    assert parse_quantity(mem, "compute.mem") == size


@pytest.mark.parametrize("mem", ["1GB", "lots", "-1Gi", -5, "1m", True, None])
def test_parse_quantity_rejects(mem):
    msg = error_of(SpecError, parse_quantity, mem, "compute.mem")
    assert msg == f"compute.mem must be a quantity like 1Gi, 512Mi or 1G, got {mem!r}"


def test_spec_to_dict_round_trips_through_json():
    [spec] = parse_api_specs(
        MINIMAL.replace("handler:", "compute: {cpu: 1, mem: 2Gi, node_groups: [a]}\nhandler:")
        + "  config: {a: {b: [1, 2]}}\n  env: {X: '1'}\n"
    )
    data = json.loads(json.dumps(spec.to_dict()))
    assert api_spec_from_dict(data) == spec
    legacy = APISpec(name="x", handler=HandlerSpec(path="p.py", legacy_predictor=True))
    assert api_spec_from_dict(legacy.to_dict()) == legacy


# --------------------------------------------------------------------------- API spec: errors


def test_malformed_yaml():
    msg = spec_error("name: a\nhandler:\n  path: [handler.py\n")
    assert msg.startswith("batchapi.yaml: invalid YAML at line 4: ")
    assert spec_error("name: a\n  handler: x\n") == (
        "batchapi.yaml: invalid YAML at line 2: mapping values are not allowed here"
    )


def test_empty_file():
    msg = "cortex.yaml is empty; it must hold an API spec with name and handler"
    assert spec_error("# only a comment\n", "cortex.yaml") == msg
    assert spec_error("[]") == (
        "batchapi.yaml holds an empty list; it must hold at least one API spec"
    )


def test_top_level_must_be_a_mapping():
    assert spec_error("just text") == (
        "batchapi.yaml: an API spec must be a mapping, got 'just text'"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL + "  confg: {}\n",
            "batchapi.yaml: unknown key 'handler.confg', did you mean 'handler.config'?",
        ),
        (MINIMAL + "replicas: 2\n", "batchapi.yaml: unknown key 'replicas'"),
        (MINIMAL + "compute: {cpus: 1}\n", "batchapi.yaml: unknown key 'compute.cpus', did you mean 'compute.cpu'?"),
        (
            MINIMAL + "  dependencies: {pipp: r.txt}\n",
            "batchapi.yaml: handler.dependencies: unknown key 'pipp', did you mean 'pip'?",
        ),
        (MINIMAL + "networking: {path: /x}\n", "batchapi.yaml: unknown key 'networking.path'"),
    ],
)  # fmt: skip
def test_unknown_keys(text, message):
    assert spec_error(text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("handler: {path: h.py}\n", "batchapi.yaml: name is required"),
        ("name: a\n", "batchapi.yaml: handler is required (a mapping with at least path)"),
        ("name: a\nhandler: h.py\n", "batchapi.yaml: handler must be a mapping, got 'h.py'"),
        (
            "name: a\nhandler: {type: python}\n",
            "batchapi.yaml: handler.path is required (the handler file, e.g. handler.py)",
        ),
        ("name: a\nhandler: {path: h.txt}\n", "batchapi.yaml: handler.path must name a .py file, got 'h.txt'"),
        ("name: a\nhandler: {path: 3}\n", "batchapi.yaml: handler.path must be a non-empty string, got 3"),
        (
            MINIMAL + "  log_level: loud\n",
            "batchapi.yaml: handler.log_level must be one of debug, info, warning, error, got 'loud'",
        ),
        (MINIMAL + "  config: [1, 2]\n", "batchapi.yaml: handler.config must be a mapping, got [1, 2]"),
        (MINIMAL + "  env: {A: null}\n", "batchapi.yaml: handler.env.A must be a string, got None"),
        (MINIMAL + "  env: [A]\n", "batchapi.yaml: handler.env must be a mapping, got ['A']"),
        (MINIMAL + "  python_path: ''\n", "batchapi.yaml: handler.python_path must be a non-empty string, got ''"),
        (MINIMAL + "  shm_size: big\n", "batchapi.yaml: handler.shm_size must be a quantity like 1Gi, 512Mi or 1G, got 'big'"),
        (MINIMAL + "compute: {gpu: -1}\n", "batchapi.yaml: compute.gpu must be an integer >= 0, got -1"),
        (MINIMAL + "compute: {gpu: 1.5}\n", "batchapi.yaml: compute.gpu must be an integer >= 0, got 1.5"),
        (MINIMAL + "compute: {inf: x}\n", "batchapi.yaml: compute.inf must be an integer >= 0, got 'x'"),
        (MINIMAL + "compute: {cpu: lots}\n", "batchapi.yaml: compute.cpu must be a CPU amount > 0 like 1, 0.5 or 200m, got 'lots'"),
        (MINIMAL + "compute: {mem: 1GB}\n", "batchapi.yaml: compute.mem must be a quantity like 1Gi, 512Mi or 1G, got '1GB'"),
        (MINIMAL + "compute: {node_groups: [1]}\n", "batchapi.yaml: compute.node_groups[0] must be a non-empty string, got 1"),
        (MINIMAL + "compute: 4\n", "batchapi.yaml: compute must be a mapping, got 4"),
    ],
)  # fmt: skip
def test_bad_values(text, message):
    assert spec_error(text) == message


def test_config_must_be_json():
    msg = spec_error(MINIMAL + "  config: {1: a}\n")
    assert (
        msg
        == "batchapi.yaml: handler.config must hold only JSON values (string keys), got {1: 'a'}"
    )


@pytest.mark.parametrize("name", ["MyAPI", "my_api", "1api", "api-", "-api", "", "a" * 43, 7])
def test_bad_names(name):
    text = json.dumps({"name": name, "handler": {"path": "h.py"}})
    if name == "a" * 43:
        expected = f"batchapi.yaml: name must be at most 42 characters, got '{name}'"
    else:
        expected = (
            "batchapi.yaml: name must be lowercase letters, digits and '-', start with a letter"
            f" and end with a letter or digit, got {name!r}"
        )
    assert spec_error(text) == expected


@pytest.mark.parametrize("name", ["a", "my-api", "a1", "x" * 42, "a-b-c9"])
def test_good_names(name):
    assert parse_api_specs(json.dumps({"name": name, "handler": {"path": "h.py"}}))[0].name == name


@pytest.mark.parametrize("kind", ["RealtimeAPI", "TaskAPI", "AsyncAPI"])
def test_other_cortex_kinds(kind):
    text = MINIMAL.replace("BatchAPI", kind)
    assert spec_error(text) == f"batchapi.yaml: kind {kind} is not supported, only kind: BatchAPI"


def test_unknown_kind():
    assert spec_error(MINIMAL.replace("BatchAPI", "Batch")) == (
        "batchapi.yaml: kind must be BatchAPI, got 'Batch'"
    )


@pytest.mark.parametrize("handler_type", ["tensorflow", "onnx"])
def test_unsupported_handler_types(handler_type):
    msg = spec_error(MINIMAL + f"  type: {handler_type}\n")
    assert msg == (
        f"batchapi.yaml: handler.type '{handler_type}' is not supported, use type: python"
        " (load the model in the Handler's __init__; a models: section can move into"
        " handler.config)"
    )
    assert spec_error(MINIMAL + "  type: java\n") == (
        "batchapi.yaml: handler.type must be python, got 'java'"
    )


# --------------------------------------------------------------------------- spec files


def test_find_spec_file_each_name(tmp_path):
    for name in SPEC_FILE_NAMES:
        project = tmp_path / name.replace(".", "-")
        project.mkdir()
        write(project, {name: MINIMAL})
        assert find_spec_file(project) == project / name


def test_find_spec_file_none(tmp_path):
    assert error_of(SpecError, find_spec_file, tmp_path) == (
        f"no batchapi.yaml or cortex.yaml in {tmp_path}"
    )
    missing = tmp_path / "nope"
    msg = error_of(SpecError, find_spec_file, missing)
    assert msg == f"project directory {str(missing)!r} not found"


def test_find_spec_file_ambiguous(tmp_path):
    write(tmp_path, {"batchapi.yaml": MINIMAL, "cortex.yaml": MINIMAL})
    assert error_of(SpecError, find_spec_file, tmp_path) == (
        f"both batchapi.yaml and cortex.yaml in {tmp_path}; keep only one spec file"
    )


def test_load_cortex_yaml(tmp_path):
    write(tmp_path, {"cortex.yaml": "- " + MINIMAL.replace("\n", "\n  "), "handler.py": ""})
    [spec] = load_api_specs(tmp_path)
    assert spec.name == "my-api" and spec.spec_file == "cortex.yaml"


def test_load_checks_handler_file(tmp_path):
    write(tmp_path, {"batchapi.yaml": MINIMAL})
    msg = error_of(HandlerError, load_api_specs, tmp_path)
    assert msg == f"batchapi.yaml: handler.path 'handler.py' not found in {tmp_path}"


def test_load_rejects_handler_outside_project(tmp_path):
    project = write(tmp_path / "p", {"batchapi.yaml": MINIMAL.replace("handler.py", "../h.py")})
    write(tmp_path, {"h.py": ""})
    msg = error_of(HandlerError, load_api_specs, project)
    assert msg == f"batchapi.yaml: handler.path '../h.py' not found in {project}"


def test_load_checks_python_path(tmp_path):
    write(tmp_path, {"batchapi.yaml": MINIMAL + "  python_path: src\n", "handler.py": ""})
    msg = error_of(SpecError, load_api_specs, tmp_path)
    assert msg == f"batchapi.yaml: handler.python_path 'src' is not a directory in {tmp_path}"
    (tmp_path / "src").mkdir()
    assert load_api_specs(tmp_path)[0].handler.python_path == "src"


def test_load_reports_the_file_name(tmp_path):
    write(tmp_path, {"cortex.yml": "name: a\nhandler: {path: h.py, bad: 1}\n"})
    assert error_of(SpecError, load_api_specs, tmp_path) == (
        "cortex.yml: unknown key 'handler.bad'"
    )


# --------------------------------------------------------------------------- duplicate keys


def test_duplicate_top_level_key():
    text = MINIMAL + "compute: {cpu: 1}\nnetworking: {}\nhandler:\n  path: other.py\n"
    assert spec_error(text) == "batchapi.yaml: duplicate key 'handler' at line 7"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "  path: other.py\n", "batchapi.yaml: duplicate key 'path' at line 5"),
        ("name: a\nhandler: {path: h.py, path: x.py}\n", "batchapi.yaml: duplicate key 'path' at line 2"),
        (MINIMAL + "  env: {A: x, B: y, A: z}\n", "batchapi.yaml: duplicate key 'A' at line 5"),
        (MINIMAL + "  config: {1: a, 01: b}\n", "batchapi.yaml: duplicate key 1 at line 5"),
        ("- name: a\n  handler: {path: a.py}\n- name: b\n  name: c\n", "batchapi.yaml: duplicate key 'name' at line 4"),
        ('{"name": "a", "handler": {"path": "h.py"}, "name": "b"}', "batchapi.yaml: duplicate key 'name' at line 1"),
    ],
)  # fmt: skip
def test_duplicate_nested_keys(text, message):
    assert spec_error(text) == message


def test_merge_keys_may_be_overridden():
    text = (
        "- name: one\n  handler: &h {path: a.py, log_level: debug}\n"
        "- name: two\n  handler:\n    <<: *h\n    path: b.py\n"
    )
    one, two = parse_api_specs(text)
    assert (one.handler.path, two.handler.path, two.handler.log_level) == ("a.py", "b.py", "debug")


def test_nested_merge_keys_are_not_duplicates():
    text = (
        "- name: one\n  handler:\n    path: a.py\n    config:\n"
        "      base: &base {k: 0, j: 1}\n      over: &over {<<: *base, k: 1}\n"
        "      again: {<<: *over}\n"
    )
    [spec] = parse_api_specs(text)
    assert spec.handler.config["over"] == {"k": 1, "j": 1}


def test_duplicate_key_names_the_spec_file(tmp_path):
    write(tmp_path, {"cortex.yaml": MINIMAL + "name: again\n", "handler.py": ""})
    msg = error_of(SpecError, load_api_specs, tmp_path)
    assert msg == "cortex.yaml: duplicate key 'name' at line 5"
