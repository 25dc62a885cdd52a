"""Shared fixtures: a fresh store per test, example projects, the S3 server, CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask.config
import pytest
from s3_fixtures import *  # noqa: F401,F403 - s3_server, s3_bucket

# Runners exit with their job unless a test asks for a warm one (test_service.py): dozens of
# runners kept warm for two minutes each would crowd a 2-core machine.
os.environ["DASK_BATCHAPI__KEEP_ALIVE"] = "0"
dask.config.set({"batchapi.keep-alive": 0})

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
def store_dir(tmp_path, monkeypatch) -> Path:
    """A fresh local store, also exported for CLI subprocesses."""
    path = tmp_path / "store"
    monkeypatch.setenv("DASK_BATCHAPI_STORE", str(path))
    return path


def write_project(
    root: Path,
    handler: str,
    spec: str | None = None,
    name: str = "test-api",
    files: dict | None = None,
) -> Path:
    """A project directory with ``handler.py`` and a spec (default: a minimal BatchAPI)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.py").write_text(textwrap.dedent(handler))
    spec = (
        spec
        or f"""
        - name: {name}
          kind: BatchAPI
          handler:
            type: python
            path: handler.py
        """
    )
    (root / "batchapi.yaml").write_text(textwrap.dedent(spec))
    for rel, content in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    return root


def run_cli(
    *args: str, input: str | None = None, timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "dask_batchapi.api.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` every 50 ms until it returns something truthy; that value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
