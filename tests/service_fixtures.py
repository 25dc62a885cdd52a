"""A real ``dask-batchapi serve`` in a subprocess on 127.0.0.1, and a deployed API to serve.

``Service.start`` runs the CLI with ``--port 0`` and reads the bound address from what it
prints; ``stop`` sends SIGTERM (uvicorn's graceful shutdown) and waits.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from conftest import run_cli, write_project

SLEEPY_HANDLER = """
    import time
    from cortex_internal.lib.log import logger
    class Handler:
        def __init__(self, config):
            self.sleep = config.get("sleep", 0)
        def handle_batch(self, payload, batch_id):
            logger.info("handling %s", payload)
            time.sleep(self.sleep)
            for item in payload:
                if isinstance(item, str) and item.startswith("fail"):
                    raise ValueError("cannot handle " + item)
    """

_LISTENING = re.compile(r"listening on (https?://\S+)")


@dataclass
class Service:
    """One running service process."""

    store: Path
    log: Path
    token: str | None = "test-token-0123456789"
    args: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None
    url: str = ""

    def start(self, timeout: float = 30) -> Service:
        env = {**os.environ, "DASK_BATCHAPI_STORE": str(self.store), **self.env}
        env.pop("DASK_BATCHAPI_TOKEN", None)
        if self.token is not None:
            env["DASK_BATCHAPI_TOKEN"] = self.token
        command = [sys.executable, "-m", "dask_batchapi", "serve", "--port", "0", *self.args]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = _LISTENING.search(self.log.read_text())
            if found and "Application startup complete" in self.log.read_text():
                self.url = found.group(1)
                return self
            if self.process.poll() is not None:
                raise AssertionError(
                    f"serve exited {self.process.returncode}:\n{self.log.read_text()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"serve did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers, timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, headers=self.headers, timeout=60, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return requests.delete(self.url + path, headers=self.headers, timeout=30, **kw)

    def wait_status(self, api: str, job_id: str, statuses: set[str], timeout: float = 90) -> dict:
        deadline = time.time() + timeout
        doc = {}
        while time.time() < deadline:
            doc = self.get(f"/{api}", params={"jobID": job_id}).json()
            if doc["job_status"]["status"] in statuses:
                return doc
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {doc.get('job_status', {}).get('status')}")


@pytest.fixture
def services(tmp_path, store_dir):
    """A factory of services on the test's store; every one is stopped at the end."""
    started: list[Service] = []

    def start(**kw) -> Service:
        log = tmp_path / f"serve-{len(started)}.log"
        service = Service(store=store_dir, log=log, **kw)
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def sleepy_api(tmp_path, store_dir) -> str:
    """An API whose handler sleeps ``config.sleep`` per batch and fails items ``fail…``."""
    project = write_project(tmp_path / "proj", SLEEPY_HANDLER, name="sleepy")
    result = run_cli("deploy", str(project))
    assert result.returncode == 0, result.stderr
    return "sleepy"


def items(n: int, sleep: float = 0.0, workers: int = 1, batch_size: int = 1) -> dict:
    return {
        "workers": workers,
        "item_list": {"items": [f"item-{i}" for i in range(n)], "batch_size": batch_size},
        "config": {"sleep": sleep},
    }
