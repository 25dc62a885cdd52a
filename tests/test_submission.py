"""Job submissions: parsing, defaults, round trips and the exact one-line error messages."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest

import dask_batchapi
from dask_batchapi.errors import SubmissionError
from dask_batchapi.spec import api_spec as spec_module
from dask_batchapi.spec import submission as submission_module
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


def error_of(exc_type: type[Exception], func, *args, **kwargs) -> str:
    """Call ``func`` expecting ``exc_type``; return its message, checked to be one line."""
    with pytest.raises(exc_type) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


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


# --------------------------------------------------------------------------- spec re-exports


MOVED = [
    "DelimitedFiles",
    "FilePathLister",
    "ItemList",
    "Submission",
    "deep_merge",
    "load_submission",
    "parse_submission",
    "submission_from_dict",
]


@pytest.mark.parametrize("name", MOVED)
def test_spec_re_exports_the_submission_names(name):
    assert getattr(spec_module, name) is getattr(submission_module, name)
    assert name in spec_module.__all__


def test_spec_all_resolves_and_is_sorted():
    assert [n for n in spec_module.__all__ if not hasattr(spec_module, n)] == []
    assert spec_module.__all__ == sorted(spec_module.__all__, key=lambda n: (not n.isupper(), n))


def _names_imported_from_spec(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if (node.level, node.module) in ((1, "spec"), (0, "dask_batchapi.spec.api_spec")):
            names.update(alias.name for alias in node.names)
    return names


def test_every_name_imported_from_spec_resolves():
    """Other modules do ``from .spec import ...``; each of those names must still be there."""
    package = Path(dask_batchapi.__file__).parent
    names = set().union(*(_names_imported_from_spec(p) for p in package.rglob("*.py")))
    assert names, "expected the package to import from .spec"
    assert [n for n in sorted(names) if not hasattr(spec_module, n)] == []
