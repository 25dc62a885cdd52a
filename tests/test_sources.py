"""sources: batching, listing and delimited JSON on local and in-memory filesystems."""

from __future__ import annotations

import json
import pickle
import random
import uuid
from dataclasses import dataclass

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from dask_batchapi.errors import SourceError, SubmissionError
from dask_batchapi.sources.batches import (
    BatchRef,
    FileIndex,
    InvalidJSONError,
    Segment,
    filter_urls,
    glob_to_regex,
    granularity_for,
    index_file,
    iter_delimited_batches,
    iter_file_batches,
    iter_item_batches,
    list_files,
    load_payloads,
)

# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class ItemList:
    items: list
    batch_size: int


@dataclass(frozen=True)
class FilePathLister:
    s3_paths: tuple[str, ...]
    batch_size: int
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DelimitedFiles:
    s3_paths: tuple[str, ...]
    batch_size: int
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()


def write(root, files: dict[str, bytes | str]) -> list[str]:
    """Write files under a local directory; return their absolute paths in sorted order."""
    paths = []
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body.encode() if isinstance(body, str) else body)
        paths.append(str(path))
    return sorted(paths)


def memory_root() -> str:
    return f"memory://sources-{uuid.uuid4().hex[:12]}"


def batches_of(files: list[str], batch_size: int, block_size: int = 1 << 22) -> list[BatchRef]:
    granularity = granularity_for(batch_size)
    indexes = (index_file(url, granularity, block_size=block_size) for url in files)
    return list(iter_delimited_batches(indexes, batch_size))


def flatten(payloads) -> list:
    values = []
    for payload in payloads:
        assert not isinstance(payload, BaseException), payload
        values.extend(payload)
    return values


def assert_exact_sizes(refs: list[BatchRef], batch_size: int, total: int) -> None:
    assert [ref.index for ref in refs] == list(range(len(refs)))
    assert all(ref.size == batch_size for ref in refs[:-1])
    assert sum(ref.size for ref in refs) == total


# --------------------------------------------------------------------------- item / file batches


def test_item_batches_last_batch_is_short():
    refs = list(iter_item_batches(list(range(10)), 4))
    assert [ref.items for ref in refs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [ref.index for ref in refs] == [0, 1, 2]
    assert [ref.size for ref in refs] == [4, 4, 2]
    assert refs[2].describe() == [8, 9]
    assert load_payloads(refs) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_item_batches_start_index_keeps_stable_indexes():
    refs = list(iter_item_batches(list(range(10)), 4, start_index=1))
    assert [(ref.index, ref.items) for ref in refs] == [(1, [4, 5, 6, 7]), (2, [8, 9])]
    assert list(iter_item_batches([], 3)) == []
    assert list(iter_item_batches([1, 2], 3, start_index=5)) == []


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_batch_size_must_be_positive_integer(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_item_batches([1], batch_size))
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_delimited_batches([], batch_size))


def test_file_batches():
    files = [f"s3://b/{n}.png" for n in range(5)]
    refs = list(iter_file_batches(files, 2))
    assert [ref.files for ref in refs] == [tuple(files[0:2]), tuple(files[2:4]), (files[4],)]
    assert [ref.size for ref in refs] == [2, 2, 1]
    assert refs[0].describe() == files[0:2]
    assert load_payloads(refs) == [files[0:2], files[2:4], [files[4]]]


# --------------------------------------------------------------------------- globs


@pytest.mark.parametrize(
    "glob, url, matches",
    [
        ("s3://b/*.jpg", "s3://b/a.jpg", True),
        ("s3://b/*.jpg", "s3://b/x/a.jpg", False),
        ("s3://b/**.jpg", "s3://b/x/y/a.jpg", True),
        ("s3://b/**.jpg", "s3://b/a.jpg", True),
        ("s3://b/**.jpg", "s3://b/a.png", False),
        ("**.jpg", "s3://b/x/a.jpg", True),
        ("*.jpg", "s3://b/a.jpg", False),  # '*' never crosses '/'
        ("s3://b/**/a.jpg", "s3://b/x/y/a.jpg", True),
        ("s3://b/img_?.png", "s3://b/img_1.png", True),
        ("s3://b/img_?.png", "s3://b/img_12.png", False),
        ("s3://b/a?b", "s3://b/a/b", False),  # '?' never matches '/'
        ("s3://b/img_[0-4].png", "s3://b/img_3.png", True),
        ("s3://b/img_[0-4].png", "s3://b/img_7.png", False),
        ("s3://b/img_[!0-4].png", "s3://b/img_7.png", True),
        ("s3://b/img_[!0-4].png", "s3://b/img_3.png", False),
        ("s3://b/a[!x]b", "s3://b/a/b", False),  # classes never match '/'
        ("s3://b/a[/]b", "s3://b/a/b", False),
        ("s3://b/[]]x", "s3://b/]x", True),
        ("s3://b/*.{jpg,png}", "s3://b/a.png", True),
        ("s3://b/*.{jpg,png}", "s3://b/a.gif", False),
        ("s3://b/{a,b{c,d}}", "s3://b/bd", True),
        ("s3://b/\\*.jpg", "s3://b/*.jpg", True),
        ("s3://b/\\*.jpg", "s3://b/x.jpg", False),
        ("s3://b/a.b+c(d)", "s3://b/a.b+c(d)", True),  # regex metacharacters are literals
        ("s3://b/a.b", "s3://b/aXb", False),
        ("s3://b/a,b}", "s3://b/a,b}", True),  # ',' and '}' are literal outside braces
        ("s3://b/*", "s3://b/", True),
    ],
)
def test_glob_semantics(glob, url, matches):
    assert bool(filter_urls([url], includes=[glob])) is matches


def test_glob_to_regex_is_anchored_by_fullmatch():
    assert glob_to_regex("s3://b/*.jpg") == "s3://b/[^/]*\\.jpg"
    assert filter_urls(["s3://b/a.jpg.bak"], includes=["s3://b/*.jpg"]) == []


@pytest.mark.parametrize("glob", ["s3://b/[abc", "s3://b/{a,b", "s3://b/[!"])
def test_invalid_glob_is_a_submission_error(glob):
    with pytest.raises(SubmissionError, match="invalid glob"):
        glob_to_regex(glob)


def test_includes_first_then_excludes():
    urls = ["s3://b/a.jpg", "s3://b/a.png", "s3://b/skip/c.jpg", "s3://b/x/d.jpg"]
    kept = filter_urls(urls, includes=["**.jpg", "**.png"], excludes=["s3://b/skip/**"])
    assert kept == ["s3://b/a.jpg", "s3://b/a.png", "s3://b/x/d.jpg"]
    # an exclude wins over an include of the same file; no includes keeps everything
    assert filter_urls(urls, includes=["**.png"], excludes=["**.png"]) == []
    assert filter_urls(urls, excludes=["**.jpg"]) == ["s3://b/a.png"]


# --------------------------------------------------------------------------- listing


@pytest.fixture
def image_tree(tmp_path):
    write(
        tmp_path,
        {
            "images/img_1.png": "1",
            "images/img_2.jpg": "2",
            "images/img/x.png": "3",
            "images/img/deep/y.png": "4",
            "images/other.png": "5",
            "imagesque.png": "6",
        },
    )
    return tmp_path


def test_prefix_is_not_a_directory(image_tree):
    root = str(image_tree)
    assert list_files([f"{root}/images/img"]) == [
        f"{root}/images/img/deep/y.png",
        f"{root}/images/img/x.png",
        f"{root}/images/img_1.png",
        f"{root}/images/img_2.jpg",
    ]
    # a trailing '/' makes the prefix a directory
    assert list_files([f"{root}/images/img/"]) == [
        f"{root}/images/img/deep/y.png",
        f"{root}/images/img/x.png",
    ]
    assert list_files([f"{root}/images"])[-1] == f"{root}/imagesque.png"
    assert list_files([f"{root}/images/img_1.png"]) == [f"{root}/images/img_1.png"]


def test_prefixes_are_merged_sorted_and_deduplicated(image_tree):
    root = str(image_tree)
    files = list_files([f"{root}/images/other", f"{root}/images/img", f"{root}/images/img_"])
    assert files == sorted(set(files))
    assert len(files) == 5


def test_listing_globs_match_the_full_url(image_tree):
    root = str(image_tree)
    assert list_files([root], includes=[f"{root}/images/*.png"]) == [
        f"{root}/images/img_1.png",
        f"{root}/images/other.png",
    ]
    assert list_files([root], includes=["**.png"], excludes=["**/img/**"]) == [
        f"{root}/images/img_1.png",
        f"{root}/images/other.png",
        f"{root}/imagesque.png",
    ]


def test_url_spelling_is_kept(image_tree, monkeypatch):
    root = str(image_tree)
    assert list_files([f"file://{root}/images/img_"]) == [
        f"file://{root}/images/img_1.png",
        f"file://{root}/images/img_2.jpg",
    ]
    monkeypatch.chdir(image_tree)  # relative local paths come back absolute
    assert list_files(["images/img_1"]) == [f"{root}/images/img_1.png"]


def test_memory_urls():
    root = memory_root()
    fs = fsspec.filesystem("memory")
    for name in ("data/a.json", "data/b.json", "data/sub/c.json", "other/d.json"):
        fs.pipe(f"{root}/{name}", b"1")
    assert list_files([f"{root}/data/"], includes=[f"{root}/data/*.json"]) == [
        f"{root}/data/a.json",
        f"{root}/data/b.json",
    ]


def test_no_match_is_a_source_error(image_tree):
    root = str(image_tree)
    with pytest.raises(SourceError) as info:
        list_files([f"{root}/images/nothing"], includes=["**.gif"], excludes=["**.bmp"])
    message = str(info.value)
    assert message.startswith("no files match s3_paths [")
    assert f"{root}/images/nothing" in message and "'**.gif'" in message and "'**.bmp'" in message
    with pytest.raises(SourceError, match="no files match"):
        list_files([root], includes=["**.gif"])
    with pytest.raises(SourceError, match="no files match"):
        list_files([f"{root}/does/not/exist/"])


class DeniedFileSystem(MemoryFileSystem):
    """Every listing is refused, as S3 does without s3:ListBucket (a test filesystem)."""

    protocol = ("deniedfs",)

    def find(self, path, *args, **kwargs):
        raise PermissionError(f"Access Denied: {path}")


fsspec.register_implementation("deniedfs", DeniedFileSystem, clobber=True)


def test_access_denied_is_a_source_error():
    with pytest.raises(SourceError, match="access denied listing 'deniedfs://b/data'"):
        list_files(["deniedfs://b/data"])


def test_unknown_protocol_is_a_source_error():
    with pytest.raises(SourceError, match="nosuchproto://"):
        list_files(["nosuchproto://b/x"])


# --------------------------------------------------------------------------- delimited: format


def test_values_per_line_multiline_values_and_blank_lines(tmp_path):
    body = (
        '{"a": 1} {"a": 2}  3\n'
        "\n\n"
        '[1,\n  2,\n  {"deep": [true, false, null]}\n]\n'
        '   "text with \\n escape"\t-4.5e2\r\n'
        "\n"
        '{"last": "no trailing newline"}'
    )
    files = write(tmp_path, {"a.jsonl": body})
    expected = [
        {"a": 1},
        {"a": 2},
        3,
        [1, 2, {"deep": [True, False, None]}],
        "text with \n escape",
        -450.0,
        {"last": "no trailing newline"},
    ]
    for batch_size in (1, 2, 3, 100):
        refs = batches_of(files, batch_size)
        assert flatten(load_payloads(refs)) == expected
        assert_exact_sizes(refs, batch_size, len(expected))


def test_batches_span_files_with_exact_sizes(tmp_path):
    files = write(
        tmp_path,
        {
            "1.jsonl": "".join(f'{{"i": {i}}}\n' for i in range(0, 5)),
            "2.jsonl": "".join(f'{{"i": {i}}}\n' for i in range(5, 7)),
            "3.jsonl": "".join(f'{{"i": {i}}}\n' for i in range(7, 15)),
        },
    )
    refs = batches_of(files, 6)
    assert [ref.size for ref in refs] == [6, 6, 3]
    # batch 0 takes 5 from file 1 and 1 from file 2; batch 1 spans the rest of 2 and into 3
    assert [(s.url[-7:], s.first_value, s.take) for s in refs[0].segments] == [
        ("1.jsonl", 0, 5),
        ("2.jsonl", 0, 1),
    ]
    assert [(s.url[-7:], s.first_value, s.take) for s in refs[1].segments] == [
        ("2.jsonl", 1, 1),
        ("3.jsonl", 0, 5),
    ]
    assert refs[1].describe() == [
        {"url": files[1], "first_value": 1, "count": 1},
        {"url": files[2], "first_value": 0, "count": 5},
    ]
    payloads = load_payloads(refs)
    assert [[v["i"] for v in p] for p in payloads] == [
        list(range(0, 6)),
        list(range(6, 12)),
        list(range(12, 15)),
    ]


def test_three_files_in_one_batch_and_empty_files(tmp_path):
    files = write(
        tmp_path,
        {
            "0-empty.jsonl": "",
            "1.jsonl": "1\n2\n",
            "2-blank.jsonl": "\n \n\t\n",
            "3.jsonl": "3",
            "4.jsonl": "4\n5\n6\n",
            "5-empty.jsonl": "",
        },
    )
    indexes = [index_file(url, 1) for url in files]
    assert [i.count for i in indexes] == [0, 2, 0, 1, 3, 0]
    assert indexes[0] == FileIndex(files[0], 0, (), 1, 0, ())
    refs = list(iter_delimited_batches(indexes, 4))
    assert [[s.url for s in ref.segments] for ref in refs] == [
        [files[1], files[3], files[4]],
        [files[4]],
    ]
    assert load_payloads(refs) == [[1, 2, 3, 4], [5, 6]]
    assert list(iter_delimited_batches([indexes[0], indexes[2]], 4)) == []


def test_byte_order_mark_and_unicode(tmp_path):
    body = '\ufeff"é"\n{"ü": "日本"}\n"\U0001f600" 7\n'.encode()
    files = write(tmp_path, {"u.jsonl": body})
    for block_size in (1, 2, 3, 5, 1 << 20):
        index = index_file(files[0], 1, block_size=block_size)
        assert index.count == 4
        assert index.offsets[0] == 3  # after the BOM
        assert index.size == len(body)
        for k, offset in enumerate(index.offsets):
            # every sampled offset is where that value's bytes start
            assert (
                body[offset:].decode().lstrip().startswith(['"é"', '{"ü"', '"\U0001f600"', "7"][k])
            )
    refs = batches_of(files, 3)
    assert flatten(load_payloads(refs)) == ["é", {"ü": "日本"}, "\U0001f600", 7]


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 5, 7, 11, 64])
def test_values_straddling_read_blocks(tmp_path, block_size):
    # numbers that a cut read would shorten ("12|34", "1.|5", "1e|+3"), literals, strings
    body = '12345 1.5 -0.25e+3 1E-2 true false null "a b c" [1, 2] {"k": "v"} 6789\n' * 3
    files = write(tmp_path, {"n.jsonl": body})
    expected = [12345, 1.5, -250.0, 0.01, True, False, None, "a b c", [1, 2], {"k": "v"}, 6789]
    reference = index_file(files[0], 1)
    assert index_file(files[0], 1, block_size=block_size) == reference
    refs = batches_of(files, 4, block_size=block_size)
    assert flatten(load_payloads(refs)) == expected * 3


def test_large_value_spanning_many_blocks(tmp_path):
    big = {"blob": "x" * 100_000, "list": list(range(5000))}
    body = json.dumps(big) + "\n" + json.dumps(big, indent=2) + "\n1\n"
    files = write(tmp_path, {"big.jsonl": body})
    index = index_file(files[0], 1, block_size=1000)
    assert index.count == 3 and index.size == len(body)
    assert load_payloads(batches_of(files, 2)) == [[big, big], [1]]


# --------------------------------------------------------------------------- delimited: bad JSON


def _bad_file(tmp_path):
    lines = [json.dumps({"i": i}) for i in range(20)]
    lines[12] = '{"i": 12, oops}'
    body = "\n".join(lines) + "\n"
    (path,) = write(tmp_path, {"data/bad.jsonl": body})
    return path, body


@pytest.mark.parametrize("batch_size", [1, 3, 7, 20, 1000])
def test_bad_json_fails_exactly_one_batch(tmp_path, batch_size):
    path, body = _bad_file(tmp_path)
    bad_byte = body.index('{"i": 12, oops}')  # where the bad value starts
    refs = batches_of([path], batch_size)
    assert_exact_sizes(refs, batch_size, 20)  # the bad line counts as one value
    payloads = load_payloads(refs)
    failed = [p for p in payloads if isinstance(p, BaseException)]
    assert len(failed) == 1
    error = failed[0]
    assert isinstance(error, InvalidJSONError) and isinstance(error, ValueError)
    assert isinstance(error, SourceError)
    assert str(error) == (
        f"{path}: invalid JSON at line 13 (byte {bad_byte}): "
        "Expecting property name enclosed in double quotes"
    )
    assert (error.url, error.line, error.byte) == (path, 13, bad_byte)
    failed_index = payloads.index(error)
    assert failed_index == 12 // batch_size
    delivered = flatten(p for p in payloads if not isinstance(p, BaseException))
    in_failed_batch = set(range(failed_index * batch_size, (failed_index + 1) * batch_size))
    assert [v["i"] for v in delivered] == [i for i in range(20) if i not in in_failed_batch]


def test_invalid_json_error_pickles(tmp_path):
    error = InvalidJSONError("s3://b/data/2.jsonl", 5, 812, "Expecting value")
    assert str(error) == "s3://b/data/2.jsonl: invalid JSON at line 5 (byte 812): Expecting value"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InvalidJSONError and str(copy) == str(error) and copy.line == 5


def test_bad_json_byte_offset_counts_utf8_bytes(tmp_path):
    body = '"ééé"\n"日本語"\n{bad}\n"ok"\n'
    (path,) = write(tmp_path, {"u.jsonl": body})
    payloads = load_payloads(batches_of([path], 1))
    assert payloads[0] == ["ééé"] and payloads[1] == ["日本語"] and payloads[3] == ["ok"]
    byte = body.encode().index(b"{bad")
    assert str(payloads[2]).endswith(
        f"invalid JSON at line 3 (byte {byte}): "
        + ("Expecting property name enclosed in double quotes")
    )


@pytest.mark.parametrize(
    "body, good",
    [
        ('1\n2\n{"a": 1', [1, 2]),  # truncated last value, no newline
        ('1\n"unterminated\n3\n', [1, 3]),  # raw newline inside a string
        ("1\nnot json at all\n3\n", [1, 3]),
        ("1\n[1, 2,\n3\n", [1]),  # unclosed bracket swallows the lines up to the error
        ("1\n" + "[" * 100_000 + "\n2\n", [1, 2]),  # nested too deeply
        ("1\n" + "9" * 5000 + "\n2\n", [1, 2]),  # more digits than int() accepts
    ],
)
def test_bad_stretch_policy(tmp_path, body, good):
    (path,) = write(tmp_path, {"x.jsonl": body})
    for block_size in (1, 3, 1 << 20):
        index = index_file(path, 1, block_size=block_size)
        assert index.count == len(good) + 1
        refs = list(iter_delimited_batches([index], 1))
        payloads = load_payloads(refs)
        errors = [p for p in payloads if isinstance(p, InvalidJSONError)]
        assert len(errors) == 1 and path in str(errors[0])
        assert flatten(p for p in payloads if not isinstance(p, BaseException)) == good


# --------------------------------------------------------------------------- delimited: loading


class CountingMemoryFileSystem(MemoryFileSystem):
    """In-memory files that record every ranged read (a test filesystem, not our code)."""

    protocol = ("countingmem",)
    reads: list = []

    @classmethod
    def _strip_protocol(cls, path):
        if path.startswith("countingmem://"):
            path = path[len("countingmem://") :]
        return MemoryFileSystem._strip_protocol(path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        type(self).reads.append((path, start, end))
        return super().cat_file(path, start=start, end=end, **kwargs)


fsspec.register_implementation("countingmem", CountingMemoryFileSystem, clobber=True)


def test_coalesced_load_equals_individual_loads_with_one_read_per_run():
    root = f"countingmem://{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("countingmem")
    files = []
    for n, count in enumerate([1000, 10, 0, 2500]):
        url = f"{root}/part-{n}.jsonl"
        fs.pipe(url, "".join(json.dumps({"f": n, "i": i}) + "\n" for i in range(count)).encode())
        files.append(url)
    refs = batches_of(files, 97)
    one_by_one = [load_payloads([ref])[0] for ref in refs]
    CountingMemoryFileSystem.reads.clear()
    together = load_payloads(refs)
    assert together == one_by_one
    # one read per file that holds values, however many batches it feeds
    assert len(CountingMemoryFileSystem.reads) == 3
    assert len(flatten(together)) == 3510
    # non-consecutive refs are not contiguous: each is its own read
    CountingMemoryFileSystem.reads.clear()
    assert load_payloads(refs[::2]) == one_by_one[::2]
    assert len(CountingMemoryFileSystem.reads) >= len(refs[::2])


def test_coalesced_load_isolates_a_bad_batch(tmp_path):
    path, _ = _bad_file(tmp_path)
    refs = batches_of([path], 3)
    payloads = load_payloads(refs)
    individually = [load_payloads([ref])[0] for ref in refs]
    assert [isinstance(p, BaseException) for p in payloads] == [
        isinstance(p, BaseException) for p in individually
    ]
    assert [p for p in payloads if not isinstance(p, BaseException)] == [
        p for p in individually if not isinstance(p, BaseException)
    ]


def test_mixed_refs_and_read_errors(tmp_path):
    files = write(tmp_path, {"a.jsonl": "1\n2\n3\n", "b.jsonl": "4\n5\n"})
    refs = batches_of(files, 2)
    (tmp_path / "b.jsonl").unlink()
    payloads = load_payloads([BatchRef(9, items=["x"]), *refs, BatchRef(8, files=("f",))])
    assert payloads[0] == ["x"] and payloads[1] == [1, 2] and payloads[-1] == ["f"]
    # batch 1 holds 3 (from a) and 4 (from b): the missing file fails it, and batch 2 too
    for failed in payloads[2:4]:
        assert isinstance(failed, SourceError) and "b.jsonl" in str(failed)


def test_file_shrunk_after_indexing_is_a_source_error(tmp_path):
    files = write(tmp_path, {"a.jsonl": "1\n2\n3\n4\n"})
    refs = batches_of(files, 2)
    (tmp_path / "a.jsonl").write_text("1\n2\n3\n")
    payloads = load_payloads(refs)
    assert payloads[0] == [1, 2]
    assert isinstance(payloads[1], SourceError) and "changed after" in str(payloads[1])


def test_index_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="nope.jsonl"):
        index_file(str(tmp_path / "nope.jsonl"), 1)


def test_delimited_batches_consume_indexes_lazily(tmp_path):
    files = write(tmp_path, {f"{n}.jsonl": "1\n2\n3\n" for n in range(10)})
    pulled = []

    def indexes():
        for url in files:
            pulled.append(url)
            yield index_file(url, 1)

    batches = iter_delimited_batches(indexes(), 4)
    first = next(batches)
    assert first.size == 4 and len(pulled) == 2
    assert len(list(batches)) == 7 and len(pulled) == 10


# --------------------------------------------------------------------------- granularity


def test_granularity_for():
    assert [granularity_for(n) for n in (1, 7, 8, 16, 1000, 2048, 10**6)] == [
        1,
        1,
        1,
        2,
        125,
        256,
        256,
    ]
    with pytest.raises(ValueError):
        granularity_for(0)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_granularity_edge_cases(tmp_path, batch_size):
    values = [{"i": i, "s": "é" * (i % 5)} for i in range(2345)]
    body = "".join(
        json.dumps(v, ensure_ascii=False) + ("\n" if i % 3 else " ") for i, v in enumerate(values)
    )
    files = write(tmp_path, {"g.jsonl": body})
    data = body.encode()
    index = index_file(files[0], granularity_for(batch_size), block_size=4096)
    step = index.granularity
    assert index.count == len(values) and len(index.offsets) == -(-len(values) // step)
    for k in (0, 1, len(index.offsets) - 1):
        decoded = json.JSONDecoder().raw_decode(data[index.offsets[k] :].decode())[0]
        assert decoded == values[k * step]
        assert index.lines[k] == data[: index.offsets[k]].count(b"\n") + 1
    refs = list(iter_delimited_batches([index], batch_size))
    assert_exact_sizes(refs, batch_size, len(values))
    for ref in refs[:: max(1, len(refs) // 50)]:
        (segment,) = ref.segments
        assert segment.skip < step and segment.start <= (segment.end or len(data))
    assert flatten(load_payloads(refs)) == values


# --------------------------------------------------------------------------- property-style


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 2 else 5)
    if kind == 0:
        return rng.randint(-(10**12), 10**12)
    if kind == 1:
        return rng.choice([0.5, -1.25e-7, 3.0e10, 12.0])
    if kind == 2:
        return "".join(rng.choice('ab é日\n"\\/\t') for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.randrange(10)
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{n}": _random_value(rng, depth + 1) for n in range(rng.randrange(4))}


def _random_file(rng: random.Random, values: list) -> bytes:
    parts = []
    for value in values:
        indent = rng.choice([None, None, None, 1])
        parts.append(json.dumps(value, indent=indent, ensure_ascii=rng.random() < 0.5))
        parts.append(rng.choice(["\n", "\n", " ", "\n\n", "\r\n", "\t", " \n  "]))
    if parts and rng.random() < 0.3:
        parts.pop()  # no trailing separator
    return "".join(parts).encode()


@pytest.mark.parametrize("seed", range(12))
def test_every_value_exactly_once_in_order(tmp_path, seed):
    rng = random.Random(seed)
    expected, files = [], {}
    for n in range(rng.randrange(1, 8)):
        values = [_random_value(rng) for _ in range(rng.choice([0, 1, 2, 5, 30, 300]))]
        files[f"part-{n:02d}.jsonl"] = _random_file(rng, values)
        expected.extend(values)
    paths = write(tmp_path, files)
    batch_size = rng.choice([1, 2, 3, 7, 16, 50, 1000])
    block_size = rng.choice([1, 7, 64, 4096])
    refs = batches_of(paths, batch_size, block_size=block_size)
    assert_exact_sizes(refs, batch_size, len(expected))
    coalesced = load_payloads(refs)
    assert flatten(coalesced) == expected
    some = rng.sample(range(len(refs)), min(len(refs), 10))
    assert [load_payloads([refs[i]])[0] for i in some] == [coalesced[i] for i in some]


def test_batch_ref_segments_describe_and_size():
    segments = (Segment("s3://b/1", 0, None, 0, 3, 0), Segment("s3://b/2", 10, 40, 2, 4, 6))
    ref = BatchRef(3, segments=segments)
    assert ref.size == 7
    assert ref.describe() == [
        {"url": "s3://b/1", "first_value": 0, "count": 3},
        {"url": "s3://b/2", "first_value": 6, "count": 4},
    ]
    assert json.loads(json.dumps(ref.describe())) == ref.describe()
    # references and indexes travel between the driver and workers
    assert pickle.loads(pickle.dumps(ref)) == ref
    index = FileIndex("s3://b/1", 3, (0, 20), 2, 30, (1, 3))
    assert pickle.loads(pickle.dumps(index)) == index


def test_bad_json_is_reported_where_the_bad_value_starts(tmp_path):
    # issue 14: the value starting at line 3 was reported at line 5, where the parser gave up
    body = '{"i": 1}\n{"i": 2}\n{"i": 3,\n  "j": 1,\n  "k" 2}\n{"i": 4}\n'
    (path,) = write(tmp_path, {"multi.jsonl": body})
    start = body.index('{"i": 3')
    for index in (index_file(path, 1), index_file(path, 1, block_size=3)):
        payloads = load_payloads(list(iter_delimited_batches([index], 1)))
        errors = [p for p in payloads if isinstance(p, InvalidJSONError)]
        assert len(errors) == 1
        assert (errors[0].line, errors[0].byte) == (3, start)
        assert str(errors[0]).startswith(f"{path}: invalid JSON at line 3 (byte {start}): ")
        assert "(parser stopped at line 5, byte " in str(errors[0])
