"""sources against a real S3 server (moto's, in a subprocess): listing, errors, large inputs.

No storage options are passed unless a test says so: s3fs finds the server through
``AWS_ENDPOINT_URL``, as a user's job would.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from s3_fixtures import put_objects

from dask_batchapi.errors import SourceError
from dask_batchapi.sources.batches import (
    InvalidJSONError,
    granularity_for,
    index_file,
    iter_delimited_batches,
    list_files,
    load_payloads,
)


@pytest.fixture
def images(s3_bucket):  # noqa: F811
    put_objects(
        s3_bucket,
        {
            "images/img_1.png": "1",
            "images/img_2.jpg": "2",
            "images/img/x.png": "3",
            "images/img/deep/y.jpg": "4",
            "images/other.png": "5",
            "imagesque.png": "6",
            "top.jpg": "7",
        },
    )
    return f"s3://{s3_bucket}"


def test_prefix_is_not_a_directory(images):
    assert list_files([f"{images}/images/img"]) == [
        f"{images}/images/img/deep/y.jpg",
        f"{images}/images/img/x.png",
        f"{images}/images/img_1.png",
        f"{images}/images/img_2.jpg",
    ]
    assert list_files([f"{images}/images/img/"]) == [
        f"{images}/images/img/deep/y.jpg",
        f"{images}/images/img/x.png",
    ]
    assert list_files([f"{images}/images/img_1.png"]) == [f"{images}/images/img_1.png"]
    assert len(list_files([images])) == len(list_files([f"{images}/"])) == 7


def test_directory_markers_are_skipped(s3_bucket):  # noqa: F811
    put_objects(
        s3_bucket,
        {
            "data/": b"",  # console-style "folder"
            "data/sub/": b"",
            "data/sub/a.jsonl": "1\n",
            "data/folder": b"",  # zero-size object that is also a directory of other keys
            "data/folder/b.jsonl": "2\n",
            "data/empty.jsonl": b"",  # an empty data file is a file
        },
    )
    assert list_files([f"s3://{s3_bucket}/data"]) == [
        f"s3://{s3_bucket}/data/empty.jsonl",
        f"s3://{s3_bucket}/data/folder/b.jsonl",
        f"s3://{s3_bucket}/data/sub/a.jsonl",
    ]


def test_star_stays_in_a_segment_double_star_crosses(images):
    assert list_files([images], includes=[f"{images}/*.jpg"]) == [f"{images}/top.jpg"]
    assert list_files([images], includes=[f"{images}/**.jpg"]) == [
        f"{images}/images/img/deep/y.jpg",
        f"{images}/images/img_2.jpg",
        f"{images}/top.jpg",
    ]


def test_includes_then_excludes(images):
    files = list_files(
        [f"{images}/images/"],
        includes=["**.png", "**.jpg"],
        excludes=[f"{images}/images/img/**", "**/other.*"],
    )
    assert files == [f"{images}/images/img_1.png", f"{images}/images/img_2.jpg"]
    with pytest.raises(SourceError, match=r"no files match s3_paths \[.*includes \['\*\*.gif'\]"):
        list_files([images], includes=["**.gif"])


def test_delimited_files_across_files(s3_bucket):  # noqa: F811
    put_objects(
        s3_bucket,
        {
            "in/part-0.jsonl": '{"i": 0} {"i": 1}\n{"i":\n 2}\n',
            "in/part-1.jsonl": "",
            "in/part-2.jsonl": '\n{"i": 3}\n{"i": 4, oops}\n{"i": 5}\n',
            "in/part-3.jsonl": '{"i": 6}\n{"i": 7}',
        },
    )
    files = list_files([f"s3://{s3_bucket}/in/part-"])
    assert len(files) == 4 and all(url.startswith(f"s3://{s3_bucket}/in/") for url in files)
    indexes = [index_file(url, granularity_for(2), block_size=5) for url in files]
    assert [index.count for index in indexes] == [3, 0, 3, 2]
    refs = list(iter_delimited_batches(indexes, 2))
    assert [ref.size for ref in refs] == [2, 2, 2, 2]
    payloads = load_payloads(refs)
    assert payloads[0] == [{"i": 0}, {"i": 1}]
    assert payloads[1] == [{"i": 2}, {"i": 3}]
    assert isinstance(payloads[2], InvalidJSONError)
    assert str(payloads[2]).startswith(f"{files[2]}: invalid JSON at line 3 (byte 10): ")
    assert payloads[3] == [{"i": 6}, {"i": 7}]


def test_missing_bucket_names_the_bucket(s3_server):  # noqa: F811
    with pytest.raises(SourceError, match="no-such-bucket-4242") as info:
        list_files(["s3://no-such-bucket-4242/data/"])
    assert "does not exist" in str(info.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_fails_fast(s3_server):  # noqa: F811
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(SourceError, match="cannot list 's3://bucket/data/'"):
        list_files(["s3://bucket/data/"], storage_options={"endpoint_url": endpoint})
    assert time.monotonic() - started < 15


@pytest.fixture
def silent_endpoint():
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_silent_endpoint_fails_after_the_read_timeout(s3_server, silent_endpoint):  # noqa: F811
    # the caller's read_timeout is merged over the listing defaults (connect timeout, retries)
    options = {"endpoint_url": silent_endpoint, "config_kwargs": {"read_timeout": 1}}
    started = time.monotonic()
    with pytest.raises(SourceError, match="cannot list"):
        list_files(["s3://bucket/data/"], storage_options=options)
    assert time.monotonic() - started < 10


# --------------------------------------------------------------------------- a large input

FILES = 1000
VALUES_PER_FILE = 1000
BATCH_SIZE = 997


def _large_body(file_number: int) -> bytes:
    first = file_number * VALUES_PER_FILE
    return "".join(f'{{"i": {n}}}\n' for n in range(first, first + VALUES_PER_FILE)).encode()


# The large input (1,000 files, 1,000,000 values) runs as a real job in test_s3_jobs.py.
