"""A real S3 server for the test suite: moto's server in a subprocess, shared by the session.

``tests/conftest.py`` re-exports these fixtures (``from s3_fixtures import *``). Test modules
import only the helpers (``from s3_fixtures import put_objects``), never the fixtures: a fixture
imported into a module is a second definition there, which would start a second server for the
session and point ``AWS_ENDPOINT_URL`` at it under every other module's buckets.

The server's endpoint and dummy credentials are exported into ``os.environ`` for the whole
session, so subprocesses (CLI runs, detached job drivers, Dask workers) reach the same server
the standard way, through ``AWS_ENDPOINT_URL``. Set ``DASK_BATCHAPI_TEST_S3_ENDPOINT`` to use a
server that is already running (CI) instead of starting one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

__all__ = ["S3Server", "put_objects", "s3_bucket", "s3_client", "s3_server"]

_STARTUP_TIMEOUT_S = 30.0

_ENDPOINT_OVERRIDE = "DASK_BATCHAPI_TEST_S3_ENDPOINT"

# Variables that would make botocore look past our environment for credentials or a profile.
_SHADOWING_VARS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@dataclass(frozen=True)
class S3Server:
    """Where the session's S3 server listens."""

    endpoint_url: str

    @property
    def storage_options(self) -> dict:
        """fsspec storage options that point s3fs at this server explicitly."""
        return {"client_kwargs": {"endpoint_url": self.endpoint_url}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(endpoint_url: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint_url + "/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


def _wait_until_up(endpoint_url: str, process: subprocess.Popen | None, log_path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if _answers(endpoint_url):
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.1)
    log = log_path.read_text(errors="replace")[-2000:] if log_path else ""
    raise RuntimeError(f"S3 test server at {endpoint_url} did not come up: {log}")


def _start_moto(log_path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    endpoint_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(endpoint_url, process, log_path)
    except BaseException:
        _stop(process)
        raise
    return process, endpoint_url


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _export(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set (or, for None, unset) environment variables; return the previous values."""
    previous = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return previous


_SESSION: list[S3Server] = []  # the one server of this test session


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """A running S3 server; its endpoint and dummy credentials are in ``os.environ``."""
    if _SESSION:  # a second definition of the fixture (imported into a module): one server
        yield _SESSION[0]
        return
    process = None
    endpoint_url = os.environ.get(_ENDPOINT_OVERRIDE)
    if endpoint_url:
        endpoint_url = endpoint_url.rstrip("/")
        _wait_until_up(endpoint_url, None, None)
    else:
        log_path = tmp_path_factory.mktemp("moto") / "moto-server.log"
        process, endpoint_url = _start_moto(log_path)
    env = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        **dict.fromkeys(_SHADOWING_VARS),
    }
    previous = _export(env)
    _SESSION.append(S3Server(endpoint_url))
    try:
        yield _SESSION[0]
    finally:
        _SESSION.clear()
        _export(previous)
        if process is not None:
            _stop(process)


def s3_client(endpoint_url: str | None = None, max_pool_connections: int = 10):
    """A boto3 S3 client for the test server (default: ``AWS_ENDPOINT_URL``)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or os.environ["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        config=Config(max_pool_connections=max_pool_connections),
    )


def _clear_s3fs_cache() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket on the test server; yields its name."""
    _clear_s3fs_cache()
    name = f"test-{uuid.uuid4().hex[:16]}"
    # moto rejects s3fs.mkdir for buckets, so create it with boto3.
    s3_client(s3_server.endpoint_url).create_bucket(Bucket=name)
    try:
        yield name
    finally:
        _clear_s3fs_cache()


def put_objects(bucket: str, objects: Mapping[str, bytes | str], *, max_workers: int = 16) -> None:
    """Upload ``{key: bytes | str}`` into ``bucket``, concurrently when there are many."""
    client = s3_client(max_pool_connections=max_workers)

    def put(item: tuple[str, bytes | str]) -> None:
        key, body = item
        data = body.encode() if isinstance(body, str) else body
        client.put_object(Bucket=bucket, Key=key, Body=data)

    if len(objects) <= 4:
        for item in objects.items():
            put(item)
        return
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        # list() re-raises the first failed upload
        list(pool.map(put, objects.items()))
