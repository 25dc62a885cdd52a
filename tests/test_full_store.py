"""A full store (issue 15): a real 20 MB tmpfs as the store. A failed submit cleans up after
itself, a driver that cannot write ends its job ``unexpected_error`` with the cause and
releases it, so ``resume`` works at once (also with its warm runner still up)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import run_cli, write_json, write_project
from test_hostile import one_line_error

FILLING_HANDLER = """
    import os, time
    class Handler:
        def __init__(self, config):
            self.config = config
        def handle_batch(self, payload, batch_id):
            time.sleep(0.05)
            if payload == [5] and not os.path.exists(self.config["once"]):
                open(self.config["once"], "w").close()
                with open(self.config["fill"], "wb") as f:  # fill the store's disk to the end
                    try:
                        while True:
                            f.write(b"\\0" * (1 << 20))
                            f.flush()
                    except OSError:
                        pass
    """
WARM = {"DASK_BATCHAPI__KEEP_ALIVE": "5"}


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = Path(tempfile.gettempdir()) / f"full-store-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)])
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
        mount.rmdir()


def _leftovers(store: Path) -> list[str]:
    return [str(p) for p in store.rglob("*") if ".tmp-" in p.name]


def test_a_full_store(tmp_path, small_disk, monkeypatch):
    store = small_disk / "store"
    monkeypatch.setenv("DASK_BATCHAPI_STORE", str(store))
    # a deploy larger than the disk: one line, and no archive left behind
    big = write_project(tmp_path / "big", FILLING_HANDLER, name="big")
    (big / "weights.bin").write_bytes(os.urandom(25 << 20))
    assert "No space left" in one_line_error(run_cli("deploy", str(big)))
    assert not list(store.rglob("*.zip")) and not _leftovers(store)
    project = write_project(tmp_path / "proj", FILLING_HANDLER, name="filling")
    assert run_cli("deploy", str(project)).returncode == 0

    # a submit larger than the disk: one line, and nothing of it left behind
    big = {"item_list": {"items": ["x" * 1000] * 25_000, "batch_size": 100}}
    line = one_line_error(run_cli("submit", "filling", str(write_json(tmp_path / "big.json", big))))
    assert "No space left" in line, line
    assert not list((store / "jobs").glob("filling/*")) and not _leftovers(store)
    assert not (store / "apis" / "big" / "api.json").exists()

    # a job whose store fills up while it runs ends unexpected_error, saying why
    config = {"fill": str(small_disk / "filler"), "once": str(tmp_path / "once")}
    sub = {"item_list": {"items": list(range(40)), "batch_size": 1}, "config": config}
    path = write_json(tmp_path / "s.json", sub)
    result = run_cli("submit", "filling", str(path), "--wait", env=WARM)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    job = result.stdout.split()[0]
    doc = json.loads(run_cli("get", "filling", job, "-o", "json").stdout)["job_status"]
    assert doc["status"] == "unexpected_error", doc
    assert "No space left" in doc["error"]["message"] and doc["error"]["reason"] == "store"
    assert not _leftovers(store)

    # with room again, resume at once (the warm runner that hosted the driver is still up)
    (small_disk / "filler").unlink()
    result = run_cli("resume", "filling", job, "--wait", env=WARM)
    assert result.returncode == 0, result.stderr
    doc = json.loads(run_cli("get", "filling", job, "-o", "json").stdout)["job_status"]
    assert doc["status"] == "succeeded" and doc["batch_metrics"]["succeeded"] == 40
