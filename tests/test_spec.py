"""API spec and job submission: parsing, defaults, and the exact one-line error messages."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dask_batchapi.errors import HandlerError, SpecError, SubmissionError
from dask_batchapi.spec import (
    SPEC_FILE_NAMES,
    APISpec,
    ComputeSpec,
    DelimitedFiles,
    Dependencies,
    FilePathLister,
    HandlerSpec,
    ItemList,
    Submission,
    api_spec_from_dict,
    deep_merge,
    find_spec_file,
    load_api_specs,
    load_submission,
    parse_api_specs,
    parse_cpu,
    parse_quantity,
    parse_submission,
    submission_from_dict,
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
    assert msg == f"batchapi.yaml: handler.type '{handler_type}' is not supported, use type: python"
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


# --------------------------------------------------------------------------- submissions

ITEMS = {"item_list": {"items": [1, 2, 3], "batch_size": 2}}


def sub_error(data) -> str:
    return error_of(SubmissionError, parse_submission, data)


def test_item_list_defaults():
    sub = parse_submission(ITEMS)
    assert sub == Submission(source=ItemList(items=[1, 2, 3], batch_size=2))
    assert (sub.workers, sub.config, sub.timeout, sub.max_receive_count) == (1, {}, None, 1)
    assert (sub.dead_letter_arn, sub.output, sub.batch_timeout) == (None, None, None)
    assert sub.source_kind == "item_list"


def test_full_submission():
    data = {
        "file_path_lister": {
            "s3_paths": ["s3://bucket/images/"],
            "includes": ["**.jpg"],
            "excludes": ["**/tmp/**"],
            "batch_size": 10,
        },
        "workers": 4,
        "config": {"dest": "s3://out/"},
        "timeout": 3600,
        "dead_letter": {"max_receive_count": 3},
        "output": "s3://bucket/results",
        "batch_timeout": 60.5,
        "node_groups": ["cpu"],
    }
    sub = parse_submission(data)
    assert sub.source == FilePathLister(
        s3_paths=("s3://bucket/images/",),
        batch_size=10,
        includes=("**.jpg",),
        excludes=("**/tmp/**",),
    )
    assert (sub.workers, sub.config, sub.timeout, sub.max_receive_count) == (
        4,
        data["config"],
        3600.0,
        3,
    )
    assert (sub.output, sub.batch_timeout, sub.source_kind) == (
        "s3://bucket/results",
        60.5,
        "file_path_lister",
    )


def test_delimited_files_and_sqs_dead_letter():
    sub = parse_submission(
        {
            "delimited_files": {"s3_paths": ["s3://b/data.jsonl"], "batch_size": 100},
            "sqs_dead_letter_queue": {"arn": "arn:aws:sqs:us-west-2:1:dlq", "max_receive_count": 2},
        }
    )
    assert sub.source == DelimitedFiles(s3_paths=("s3://b/data.jsonl",), batch_size=100)
    assert (sub.max_receive_count, sub.dead_letter_arn) == (2, "arn:aws:sqs:us-west-2:1:dlq")
    assert sub.source_kind == "delimited_files"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1], "submission must be a JSON object, got [1]"),
        ({}, "submission must have one of item_list, file_path_lister, delimited_files"),
        ({"workers": 2}, "submission must have one of item_list, file_path_lister, delimited_files"),
        (
            {**ITEMS, "file_path_lister": {"s3_paths": ["s3://b/"], "batch_size": 1}},
            "submission must have one of item_list, file_path_lister, delimited_files, got item_list and file_path_lister",
        ),
        ({**ITEMS, "foo": 1}, "submission: unknown key 'foo'"),
        ({**ITEMS, "worker": 1}, "submission: unknown key 'worker', did you mean 'workers'?"),
        ({"item_list": {"items": [1], "bsize": 1}}, "item_list: unknown key 'bsize', did you mean 'batch_size'?"),
        ({"item_list": {"batch_size": 1}}, "item_list.items must be a non-empty list, got None"),
        ({"item_list": {"items": [], "batch_size": 1}}, "item_list.items must be a non-empty list, got []"),
        ({"item_list": {"items": "abc", "batch_size": 1}}, "item_list.items must be a non-empty list, got 'abc'"),
        ({"item_list": {"items": [1]}}, "item_list.batch_size is required"),
        ({"item_list": [1, 2]}, "item_list must be a mapping, got [1, 2]"),
        ({"file_path_lister": {"s3_paths": [], "batch_size": 1}}, "file_path_lister.s3_paths must be a non-empty list of strings, got []"),
        ({"file_path_lister": {"s3_paths": "s3://b/", "batch_size": 1}}, "file_path_lister.s3_paths must be a non-empty list of strings, got 's3://b/'"),
        ({"delimited_files": {"s3_paths": [""], "batch_size": 1}}, "delimited_files.s3_paths[0] must be a non-empty string, got ''"),
        ({"delimited_files": {"s3_paths": ["s3://b/"], "includes": "*.json", "batch_size": 1}}, "delimited_files.includes must be a list of strings, got '*.json'"),
        ({"delimited_files": {"s3_paths": ["s3://b/"], "excludes": [3], "batch_size": 1}}, "delimited_files.excludes[0] must be a non-empty string, got 3"),
        ({**ITEMS, "workers": 0}, "workers must be an integer >= 1, got 0"),
        ({**ITEMS, "workers": "2"}, "workers must be an integer >= 1, got '2'"),
        ({**ITEMS, "config": [1]}, "config must be a mapping, got [1]"),
        ({**ITEMS, "timeout": -5}, "timeout must be a number > 0, got -5"),
        ({**ITEMS, "timeout": 0}, "timeout must be a number > 0, got 0"),
        ({**ITEMS, "timeout": True}, "timeout must be a number > 0, got True"),
        ({**ITEMS, "timeout": "60"}, "timeout must be a number > 0, got '60'"),
        ({**ITEMS, "batch_timeout": 0}, "batch_timeout must be a number > 0, got 0"),
        ({**ITEMS, "output": ""}, "output must be a non-empty string, got ''"),
        ({**ITEMS, "node_groups": "cpu"}, "node_groups must be a list of strings, got 'cpu'"),
        ({**ITEMS, "dead_letter": {"max_receive_count": 0}}, "dead_letter.max_receive_count must be an integer >= 1, got 0"),
        ({**ITEMS, "dead_letter": {}}, "dead_letter.max_receive_count is required"),
        ({**ITEMS, "dead_letter": {"max_receive_count": 2, "arn": "x"}}, "dead_letter: unknown key 'arn'"),
        ({**ITEMS, "sqs_dead_letter_queue": {"max_receive_count": 2}}, "sqs_dead_letter_queue.arn is required"),
        ({**ITEMS, "sqs_dead_letter_queue": {"arn": "", "max_receive_count": 2}}, "sqs_dead_letter_queue.arn must be a non-empty string, got ''"),
        (
            {**ITEMS, "dead_letter": {"max_receive_count": 2}, "sqs_dead_letter_queue": {"arn": "a", "max_receive_count": 2}},
            "submission has both dead_letter and sqs_dead_letter_queue; use one",
        ),
    ],
)  # fmt: skip
def test_bad_submissions(data, message):
    assert sub_error(data) == message


@pytest.mark.parametrize("batch_size", [0, -1, "8", True, 2.5, None])
def test_bad_batch_size(batch_size):
    data = {"item_list": {"items": [1], "batch_size": batch_size}}
    assert sub_error(data) == f"item_list.batch_size must be an integer >= 1, got {batch_size!r}"


def test_where_names_the_top_level_object():
    msg = error_of(SubmissionError, parse_submission, {"x": 1, **ITEMS}, where="retry.json")
    assert msg == "retry.json: unknown key 'x'"


def test_long_values_are_shortened():
    msg = sub_error({"item_list": {"items": [1], "batch_size": "x" * 500}})
    assert len(msg) < 150 and msg.endswith("...")


@pytest.mark.parametrize(
    "data",
    [
        ITEMS,
        {**ITEMS, "workers": 3, "config": {"a": {"b": 1}}, "timeout": 10, "output": "memory://o"},
        {**ITEMS, "dead_letter": {"max_receive_count": 5}, "batch_timeout": 2.5},
        {"file_path_lister": {"s3_paths": ["s3://b/x"], "includes": ["*"], "batch_size": 2}},
        {
            "delimited_files": {"s3_paths": ["s3://b/"], "excludes": ["*.tmp"], "batch_size": 9},
            "sqs_dead_letter_queue": {"arn": "arn:x", "max_receive_count": 4},
        },
    ],
)
def test_submission_to_dict_round_trips(data):
    sub = parse_submission(data)
    as_json = json.loads(json.dumps(sub.to_dict()))
    assert submission_from_dict(as_json) == sub
    assert sub.source_kind in as_json


def test_submission_to_dict_uses_cortex_names():
    sub = parse_submission({**ITEMS, "timeout": 5})
    assert sub.to_dict() == {
        "item_list": {"items": [1, 2, 3], "batch_size": 2},
        "workers": 1,
        "config": {},
        "dead_letter": {"max_receive_count": 1},
        "timeout": 5.0,
    }


def test_load_submission_file_and_stdin(tmp_path):
    path = write(tmp_path, {"job.json": json.dumps(ITEMS)}) / "job.json"
    assert load_submission(str(path)) == parse_submission(ITEMS)
    assert load_submission("-", stdin=io.StringIO(json.dumps(ITEMS))) == parse_submission(ITEMS)


def test_load_submission_bad_json(tmp_path):
    path = write(tmp_path, {"job.json": '{\n  "workers": 1,\n  "item_list": \n}'}) / "job.json"
    msg = error_of(SubmissionError, load_submission, str(path))
    assert msg == f"{path}: invalid JSON at line 4 column 1: Expecting value"
    msg = error_of(SubmissionError, load_submission, "-", stdin=io.StringIO("{oops"))
    assert msg.startswith("stdin: invalid JSON at line 1 column 2: ")


def test_load_submission_missing_file(tmp_path):
    path = str(tmp_path / "nope.json")
    assert error_of(SubmissionError, load_submission, path) == (
        f"submission file {path!r} not found"
    )
    msg = error_of(SubmissionError, load_submission, str(tmp_path))
    assert msg.startswith(f"cannot read submission file {str(tmp_path)!r}: ")


def test_load_submission_validates(tmp_path):
    path = write(tmp_path, {"job.json": json.dumps({"item_list": {"items": [], "batch_size": 1}})})
    msg = error_of(SubmissionError, load_submission, str(path / "job.json"))
    assert msg == "item_list.items must be a non-empty list, got []"


# --------------------------------------------------------------------------- deep_merge


def test_deep_merge_nested_and_pure():
    base = {"a": {"x": 1, "y": {"k": [1]}}, "b": 1, "keep": {"z": 0}}
    override = {"a": {"y": {"j": 2}, "w": 3}, "b": {"now": "dict"}, "c": [1]}
    snapshot = json.dumps([base, override], sort_keys=True)
    merged = deep_merge(base, override)
    assert merged == {
        "a": {"x": 1, "y": {"k": [1], "j": 2}, "w": 3},
        "b": {"now": "dict"},
        "keep": {"z": 0},
        "c": [1],
    }
    merged["a"]["y"]["k"].append(2)
    merged["c"].append(2)
    merged["keep"]["z"] = 9
    assert json.dumps([base, override], sort_keys=True) == snapshot


def test_deep_merge_override_wins_over_dicts():
    assert deep_merge({"a": {"x": 1}}, {"a": None}) == {"a": None}
    assert deep_merge({}, {}) == {}
