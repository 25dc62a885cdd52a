"""Hostile probes (issue 15), kept as tests: private files, no hijackable socket, loopback
only, zip bombs, orphaned processes, corrupted store files.

Real CLI subprocesses, real files, real clusters. A user mistake or a hostile file is one line
on stderr, a non-zero exit, and no traceback."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import psutil
import pytest
from conftest import run_cli, wait_for, write_json, write_project

from dask_batchapi.errors import LimitError, UnsafeDirectory
from dask_batchapi.fsutil import peer_uid, private_runtime_dir
from dask_batchapi.spec.unpack import unpack_project

NOBODY = 65534
HANDLER = """
    import os, subprocess, json
    class Handler:
        def __init__(self, config):
            self.config = config
        def handle_batch(self, payload, batch_id):
            mode = os.stat(".env").st_mode & 0o777
            child = subprocess.Popen(["sleep", "300"]) if self.config.get("fork") else None
            with open(os.path.join(self.config["marks"], batch_id), "w") as f:
                json.dump({"env_mode": mode, "child": child and child.pid}, f)
    """


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error a CLI run printed: asserts non-zero exit, one line, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def api(tmp_path, store_dir):
    project = write_project(tmp_path / "proj", HANDLER, name="hostile", files={".env": "K=v\n"})
    result = run_cli("deploy", str(project))
    assert result.returncode == 0, result.stderr
    return "hostile"


def _submit(tmp_path, config: dict, items: int = 2, wait: bool = True) -> str:
    sub = {"item_list": {"items": list(range(items)), "batch_size": 1}, "config": config}
    args = ["submit", "hostile", str(write_json(tmp_path / "sub.json", sub))]
    result = run_cli(*args, *(["--wait"] if wait else []))
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[0]


def _modes(root: Path) -> tuple[set[int], set[int]]:
    dirs, files = set(), set()
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        (dirs if path.is_dir() else files).add(mode)
    return dirs, files


# -- 1. private store and projects -------------------------------------------------------------
def test_store_and_unpacked_project_are_private_under_a_lax_umask(api, tmp_path, store_dir):
    old = os.umask(0o002)  # the subprocesses inherit it
    try:
        marks = tmp_path / "marks"
        marks.mkdir()
        _submit(tmp_path, {"marks": str(marks)})
    finally:
        os.umask(old)
    dirs, files = _modes(store_dir)
    assert dirs == {0o700} and files == {0o600}, (dirs, files)
    seen = [json.loads(p.read_text()) for p in marks.iterdir()]
    assert seen and all(s["env_mode"] == 0o600 for s in seen)  # the worker's unpacked .env


def test_the_default_store_is_private(tmp_path, monkeypatch):
    monkeypatch.delenv("DASK_BATCHAPI_STORE", raising=False)
    project = write_project(tmp_path / "proj", HANDLER, name="hostile")
    result = run_cli("deploy", str(project), env={"HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    dirs, files = _modes(tmp_path / "home" / ".dask-batchapi")
    assert dirs == {0o700} and files == {0o600}, (dirs, files)


def test_unpack_creates_private_files_and_caps_a_zip_bomb(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(".env", "SECRET=1\n")
        archive.writestr("bomb.bin", b"\0" * (32 << 20))  # 32 MB of zeros: ~32 KB zipped
    data = buffer.getvalue()
    assert len(data) < 100_000
    with pytest.raises(LimitError, match="over the limit of 1000000 bytes"):
        unpack_project(data, tmp_path / "bomb", max_bytes=1_000_000)
    assert not (tmp_path / "bomb").exists()
    with pytest.raises(LimitError, match="holds 2 files, over the limit of 1"):
        unpack_project(data, tmp_path / "many", max_files=1)
    target = unpack_project(data, tmp_path / "ok" / "job")
    assert stat.S_IMODE((target / ".env").stat().st_mode) == 0o600
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_a_changed_archive_in_the_store_is_refused(api, tmp_path, store_dir):
    (archive,) = (store_dir / "apis" / "hostile" / "archives").iterdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as evil:
        evil.writestr("handler.py", "class Handler:\n    def handle_batch(self, payload): pass\n")
    archive.write_bytes(buffer.getvalue())
    sub = {"item_list": {"items": [1], "batch_size": 1}}
    result = run_cli("submit", "hostile", str(write_json(tmp_path / "s.json", sub)), "--wait")
    assert result.returncode != 0
    job = result.stdout.split()[0]
    doc = json.loads(run_cli("get", "hostile", job, "-o", "json").stdout)["job_status"]
    assert doc["status"] == "unexpected_error"
    assert "was changed in the store" in doc["error"]["message"]


# -- 2. the warm runner's directory and socket --------------------------------------------------
def test_a_squatted_runtime_directory_is_refused_before_anything_is_written(
    api, tmp_path, monkeypatch
):
    own_tmp = tmp_path / "tmp"  # a temp dir of this test's own: never squat the machine's
    own_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(own_tmp))  # the CLI subprocess's
    monkeypatch.setattr(tempfile, "tempdir", str(own_tmp))  # this process's
    squat = own_tmp / f"dask-batchapi-runners-{os.getuid()}"
    shutil.rmtree(squat, ignore_errors=True)
    squat.mkdir(mode=0o777)
    os.chmod(squat, 0o777)
    try:
        sub = {"item_list": {"items": [1], "batch_size": 1}}
        result = run_cli("submit", "hostile", str(write_json(tmp_path / "s.json", sub)))
        line = one_line_error(result)
        assert "open to other users" in line and str(squat) in line
        os.chmod(squat, 0o700)
        os.chown(squat, NOBODY, NOBODY)  # another user's, even private
        with pytest.raises(UnsafeDirectory, match="belongs to uid 65534"):
            private_runtime_dir("dask-batchapi-runners")
    finally:
        shutil.rmtree(squat, ignore_errors=True)
    assert private_runtime_dir("dask-batchapi-runners").stat().st_mode & 0o777 == 0o700


def _listen_as(uid: int, path: Path) -> int:
    """A child process of user ``uid`` listening on the Unix socket ``path``; its pid."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        try:
            os.setgid(uid)
            os.setuid(uid)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(1)
            os.write(ready_w, b"1")
            listener.accept()
            time.sleep(5)
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return pid


def test_a_socket_of_another_user_gets_no_job():
    from dask_batchapi.driver.warm import _ours

    shared = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own directories are private
    os.chmod(shared, 0o777)
    path = shared / "x.sock"
    pid = _listen_as(NOBODY, path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            assert peer_uid(sock) == NOBODY
            assert _ours(sock) is False
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        shutil.rmtree(shared)


# -- 3. loopback only ---------------------------------------------------------------------------
def test_the_embedded_cluster_listens_on_loopback_only():
    from dask_batchapi.cluster.backends import LocalBackend

    backend = LocalBackend(1)
    client = backend.start()
    try:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        listening = {
            c.laddr.ip
            for p in procs
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening and listening <= {"127.0.0.1", "::1"}, listening
        assert "127.0.0.1" in client.dashboard_link
    finally:
        backend.close()


# -- 5. a handler's forked children end with the job --------------------------------------------
def test_children_a_handler_forked_end_with_the_job(api, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    _submit(tmp_path, {"marks": str(marks), "fork": True}, items=3)
    pids = [json.loads(p.read_text())["child"] for p in marks.iterdir()]
    assert len(pids) == 3

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: all(gone(pid) for pid in pids), 20, "the handler's children to end")


# -- 8. a corrupted job file breaks only that job -----------------------------------------------
CORRUPT_STATES = {
    "truncated": '{"status": "runn',
    "a list": "[1, 2]",
    "unknown status": '{"status": "exploded"}',
    "strings for numbers": '{"status": "succeeded", "succeeded": "12"}',
}


@pytest.mark.parametrize("kind", list(CORRUPT_STATES))
def test_one_corrupted_state_breaks_only_its_job(api, tmp_path, store_dir, kind):
    good = _submit(tmp_path, {"marks": str(tmp_path)}, items=1)
    jobs = store_dir / "jobs" / "hostile"
    bad = "f" * 16
    shutil.copytree(jobs / good, jobs / bad)
    record = json.loads((jobs / bad / "job.json").read_text())
    (jobs / bad / "job.json").write_text(json.dumps({**record, "job_id": bad}))
    (jobs / bad / "state.json").write_text(CORRUPT_STATES[kind])
    listing = run_cli("get", "hostile", "-o", "json")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    rows = {j["job_id"]: j for j in json.loads(listing.stdout)}
    assert rows[good]["status"] == "succeeded"
    assert rows[bad]["unreadable"] and "state.json" in rows[bad]["error"]["message"]
    assert run_cli("get", "hostile").returncode == 0
    assert run_cli("get").returncode == 0
    line = one_line_error(run_cli("get", "hostile", bad))
    assert f"{bad}/state.json" in line and "corrupted" in line or "not valid JSON" in line


def test_a_corrupted_api_or_job_record_is_named(api, tmp_path, store_dir):
    good = _submit(tmp_path, {"marks": str(tmp_path)}, items=1)
    job_json = store_dir / "jobs" / "hostile" / good / "job.json"
    job_json.write_text('{"job_id": "x"}')
    assert "job.json" in one_line_error(run_cli("get", "hostile", good))
    (store_dir / "apis" / "other").mkdir()
    (store_dir / "apis" / "other" / "api.json").write_text("[]")
    listing = run_cli("get")
    assert (
        listing.returncode == 0 and "hostile" in listing.stdout and "unreadable" in listing.stdout
    )
    assert "api.json" in one_line_error(run_cli("get", "other"))
