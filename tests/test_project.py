"""Project directory: packing rules, safe unpacking, .env, and the handler check subprocess."""

from __future__ import annotations

import io
import logging
import os
import stat
import zipfile
from pathlib import Path

import pytest

from dask_batchapi.errors import HandlerError, SpecError
from dask_batchapi.spec.api_spec import HandlerSpec
from dask_batchapi.spec.project import (
    DEFAULT_MAX_ARCHIVE_BYTES,
    HandlerSignature,
    check_handler,
    pack_project,
    read_env_file,
    signature_args,
    unpack_project,
)

OK_HANDLER = """
class Handler:
    def __init__(self, config):
        self.config = config

    def handle_batch(self, payload, batch_id):
        return payload

    def on_job_complete(self):
        pass
"""


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def error_of(exc_type: type[Exception], func, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def unzip(archive) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive.data)) as z:
        return {name: z.read(name) for name in z.namelist()}


# --------------------------------------------------------------------------- packing


def test_pack_excludes_and_ignore_files(tmp_path):
    write(
        tmp_path,
        {
            "batchapi.yaml": "name: a\n",
            "handler.py": "x = 1\n",
            "values.json": "{}",
            ".env": "A=1\n",
            "sub/.env": "B=2\n",
            "a.pyc": b"\0",
            "sub/b.pyo": b"\0",
            "sub/c.pyd": b"\0",
            "__pycache__/x.py": "",
            "sub/__pycache__/y.py": "",
            ".git/config": "",
            ".hidden": "",
            "sub/.hidden2": "",
            "sub/keep.py": "",
            "cortex.yaml.bak": "",
            ".cortexignore": "data/\n*.log\n!keep.log\nsecret.txt\n/rootonly.txt\n",
            ".batchapiignore": "extra/*\n!extra/wanted.txt\n",
            "data/big.bin": b"\0" * 100,
            "sub/data/also.bin": b"\0",
            "app.log": "",
            "sub/deep.log": "",
            "keep.log": "",
            "sub/secret.txt": "",
            "rootonly.txt": "",
            "sub/rootonly.txt": "",
            "extra/dropped.txt": "",
            "extra/wanted.txt": "",
        },
    )
    archive = pack_project(tmp_path, "batchapi.yaml")
    assert archive.files == (
        ".env",
        "cortex.yaml.bak",
        "extra/wanted.txt",
        "handler.py",
        "keep.log",
        "sub/keep.py",
        "sub/rootonly.txt",
        "values.json",
    )
    assert sorted(unzip(archive)) == list(archive.files)
    assert unzip(archive)[".env"] == b"A=1\n"


def test_pack_leaves_out_the_named_spec_file_only(tmp_path):
    write(tmp_path, {"cortex.yaml": "", "batchapi.yml": "", "handler.py": ""})
    assert pack_project(tmp_path, "cortex.yaml").files == ("batchapi.yml", "handler.py")


def test_symlinks_inside_followed_outside_skipped(tmp_path, caplog):
    project = write(tmp_path / "p", {"handler.py": "", "lib/util.py": "u = 1\n"})
    outside = write(tmp_path / "outside", {"secret.txt": "s", "dir/x.txt": "x"})
    os.symlink(project / "lib/util.py", project / "util_link.py")
    os.symlink(project / "lib", project / "lib_link")
    os.symlink(outside / "secret.txt", project / "secret.txt")
    os.symlink(outside / "dir", project / "outdir")
    os.symlink(project / "missing.txt", project / "broken.txt")
    os.symlink(project, project / "lib" / "loop")
    with caplog.at_level(logging.WARNING, logger="dask_batchapi.spec.project"):
        archive = pack_project(project, "batchapi.yaml")
    assert archive.files == ("handler.py", "lib/util.py", "lib_link/util.py", "util_link.py")
    assert unzip(archive)["util_link.py"] == b"u = 1\n"
    warnings = caplog.text
    assert "secret.txt: symbolic link to" in warnings and "outside the project" in warnings
    assert "outdir: symbolic link to" in warnings
    assert "broken.txt: broken symbolic link" in warnings
    assert "lib/loop: a symbolic link loop" in warnings


def test_size_limit(tmp_path):
    write(tmp_path, {"handler.py": "", "model.bin": b"\0" * (3 * 2**19), "small": b"\0" * 10})
    message = error_of(SpecError, pack_project, tmp_path, "batchapi.yaml", max_bytes=2**20)
    assert message == (
        f"project {tmp_path.resolve()} is 1.5 MB, over the limit of 1 MB;"
        " add large files to .cortexignore"
    )
    write(tmp_path, {".cortexignore": "*.bin\n"})
    assert pack_project(tmp_path, "batchapi.yaml", max_bytes=2**20).files == ("handler.py", "small")
    assert DEFAULT_MAX_ARCHIVE_BYTES == 256 * 2**20


def test_archive_is_deterministic(tmp_path):
    files = {"handler.py": "x = 1\n", "data/a.json": "[1]", "run.sh": "echo hi\n"}
    one = write(tmp_path / "one", files)
    (one / "run.sh").chmod(0o755)
    first = pack_project(one, "batchapi.yaml")
    os.utime(one / "handler.py", (1, 1))
    assert pack_project(one, "batchapi.yaml").sha256 == first.sha256
    two = write(tmp_path / "two", files)
    (two / "run.sh").chmod(0o755)
    assert pack_project(two, "batchapi.yaml").data == first.data
    (two / "handler.py").write_text("x = 2\n")
    assert pack_project(two, "batchapi.yaml").sha256 != first.sha256
    assert len(first.sha256) == 64


def test_missing_project_dir(tmp_path):
    message = error_of(SpecError, pack_project, tmp_path / "nope", "batchapi.yaml")
    assert message == f"project directory {str(tmp_path / 'nope')!r} not found"


# --------------------------------------------------------------------------- unpacking


def test_unpack_round_trip(tmp_path):
    project = write(tmp_path / "p", {"handler.py": "x", "sub/dir/v.json": "{}", "run.sh": "#!"})
    (project / "run.sh").chmod(0o755)
    target = unpack_project(pack_project(project, "batchapi.yaml").data, tmp_path / "out" / "job")
    assert target == tmp_path / "out" / "job"
    assert (target / "sub/dir/v.json").read_text() == "{}"
    assert (target / "run.sh").stat().st_mode & stat.S_IXUSR
    assert not (target / "handler.py").stat().st_mode & stat.S_IXUSR


def malicious_zip(name: str, *, symlink: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("fine.txt", "ok")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd" if symlink else "evil")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil.txt", "has an unsafe path"),
        ("a/../../evil.txt", "has an unsafe path"),
        ("/tmp/evil.txt", "has an unsafe path"),
        ("..\\evil.txt", "has an unsafe path"),
        ("C:/evil.txt", "has an unsafe path"),
    ],
)
def test_unpack_rejects_escaping_names(tmp_path, name, problem):
    target = tmp_path / "out"
    message = error_of(SpecError, unpack_project, malicious_zip(name), target)
    assert message == f"project archive member {name!r} {problem}; refused"
    assert list(target.iterdir()) == []  # checked before anything is written
    assert not (tmp_path / "evil.txt").exists()


def test_unpack_rejects_symlinks(tmp_path):
    message = error_of(SpecError, unpack_project, malicious_zip("link", symlink=True), tmp_path)
    assert message == "project archive member 'link' is a symbolic link; refused"
    assert not (tmp_path / "link").exists()


def test_unpack_rejects_escape_through_existing_symlink(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", target / "sub")
    message = error_of(SpecError, unpack_project, malicious_zip("sub/evil.txt"), target)
    assert message.startswith("project archive member 'sub/evil.txt' points outside ")
    assert not (tmp_path / "elsewhere" / "evil.txt").exists()


def test_unpack_rejects_garbage(tmp_path):
    message = error_of(SpecError, unpack_project, b"not a zip", tmp_path)
    assert message == "project archive is not a valid zip file: File is not a zip file"


# --------------------------------------------------------------------------- .env


def test_read_env_file(tmp_path):
    assert read_env_file(tmp_path) == {}
    write(tmp_path, {".env": "# comment\nA=1\nexport B='two words'\nC=\"x=y\"\nEMPTY=\nBARE\n"})
    assert read_env_file(tmp_path) == {"A": "1", "B": "two words", "C": "x=y", "EMPTY": ""}


# --------------------------------------------------------------------------- signatures


class Example:
    def __init__(self, config, job_spec):
        pass

    def handle_batch(self, payload):
        pass

    def kwargs(self, payload, **rest):
        pass

    def star(self, batch_id, *args):
        pass

    def bad(self, payload, foo):
        pass

    def positional(self, payload, /):
        pass


def test_signature_args():
    allowed = ("payload", "batch_id")
    assert signature_args(Example.handle_batch, allowed, "w") == ("payload",)
    assert signature_args(Example(1, 2).handle_batch, allowed, "w") == ("payload",)
    assert signature_args(Example.kwargs, allowed, "w") == allowed
    assert signature_args(Example.star, allowed, "w") == ("batch_id",)
    assert signature_args(Example.__init__, ("config", "job_spec"), "w") == ("config", "job_spec")
    assert signature_args(lambda: None, allowed, "w") == ()


def test_signature_args_errors():
    allowed = ("payload", "batch_id")
    assert error_of(HandlerError, signature_args, Example.bad, allowed, "Handler.handle_batch") == (
        "Handler.handle_batch: unknown argument 'foo' (allowed: payload, batch_id)"
    )
    message = error_of(HandlerError, signature_args, Example.positional, allowed, "H.m")
    assert message == "H.m: argument 'payload' must not be positional-only"
    message = error_of(HandlerError, signature_args, Example.bad, (), "Handler.on_job_complete")
    assert message == "Handler.on_job_complete: unknown argument 'payload' (allowed: none)"


def test_handler_signature_round_trip():
    sig = HandlerSignature("Handler", ("config",), "handle_batch", ("payload",), None)
    assert HandlerSignature.from_dict(sig.to_dict()) == sig
    assert sig.to_dict()["init_args"] == ["config"]


# --------------------------------------------------------------------------- check_handler


def check(root: Path, source: str, path: str = "handler.py", **spec) -> HandlerSignature:
    write(root, {path: source})
    return check_handler(root, HandlerSpec(path=path, **spec), timeout=30)


def check_error(root: Path, source: str, path: str = "handler.py", **spec) -> str:
    return error_of(HandlerError, check, root, source, path, **spec)


def test_check_ok(tmp_path):
    assert check(tmp_path, OK_HANDLER) == HandlerSignature(
        class_name="Handler",
        init_args=("config",),
        batch_method="handle_batch",
        batch_args=("payload", "batch_id"),
        complete_method="on_job_complete",
    )
    assert not (tmp_path / "__pycache__").exists()


def test_check_minimal_handler(tmp_path):
    source = "class Handler:\n    def handle_batch(self):\n        pass\n"
    assert check(tmp_path, source) == HandlerSignature("Handler", (), "handle_batch", (), None)


def test_check_cortex_variants(tmp_path):
    source = """
class Base:
    def __init__(self, job_spec, config):
        pass

class Handler(Base):
    @staticmethod
    def handle_batch(batch_id, **kwargs):
        pass

    def handle_on_job_complete(self):
        pass
"""
    sig = check(tmp_path, source)
    assert sig.init_args == ("job_spec", "config")
    assert sig.batch_args == ("payload", "batch_id")  # **kwargs accepts every allowed name
    assert sig.complete_method == "handle_on_job_complete"


def test_check_syntax_error(tmp_path):
    source = "class Handler:\n    def handle_batch(self, payload)\n        pass\n"
    assert check_error(tmp_path, source) == "handler.py:2: SyntaxError: expected ':'"


def test_check_syntax_error_in_imported_module(tmp_path):
    write(tmp_path, {"helpers.py": "def f(:\n"})
    message = check_error(tmp_path, "import helpers\n" + OK_HANDLER)
    assert message.startswith("handler.py: import failed: SyntaxError: invalid syntax (")
    assert "helpers.py, line 1)" in message


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("1 / 0\n", "handler.py: import failed: ZeroDivisionError: division by zero"),
        ("import no_such_module_xyz\n", "handler.py: import failed: ModuleNotFoundError: No module named 'no_such_module_xyz'"),
        ("raise RuntimeError('line one\\nline two')\n", "handler.py: import failed: RuntimeError: line one line two"),
        ("import sys\nsys.exit(3)\n", "handler.py: import failed: SystemExit: 3"),
        ("class Predictor:\n    pass\n", "handler.py has no class named Handler"),
        ("Handler = 3\n", "handler.py has no class named Handler"),
        ("class Handler:\n    pass\n", "handler.py: class Handler has no method handle_batch"),
        (
            "class Handler:\n    def handle_batch(self, payload, foo):\n        pass\n",
            "Handler.handle_batch: unknown argument 'foo' (allowed: payload, batch_id)",
        ),
        (
            "class Handler:\n    def __init__(self, cfg):\n        pass\n    def handle_batch(self):\n        pass\n",
            "Handler.__init__: unknown argument 'cfg' (allowed: config, job_spec, metrics_client)",
        ),
        (
            "class Handler:\n    def handle_batch(self):\n        pass\n    def on_job_complete(self, x):\n        pass\n",
            "Handler.on_job_complete: unknown argument 'x' (allowed: none)",
        ),
    ],
)  # fmt: skip
def test_check_errors(tmp_path, source, message):
    assert check_error(tmp_path, source) == message


def test_check_legacy_predictor(tmp_path):
    source = """
class PythonPredictor:
    def __init__(self, config, job_spec):
        pass

    def predict(self, payload, batch_id):
        pass

    def on_job_complete(self):
        pass
"""
    sig = check(tmp_path, source, "predictor.py", legacy_predictor=True)
    assert sig == HandlerSignature(
        "PythonPredictor",
        ("config", "job_spec"),
        "predict",
        ("payload", "batch_id"),
        "on_job_complete",
    )
    message = check_error(tmp_path, OK_HANDLER, "predictor.py", legacy_predictor=True)
    assert message == "predictor.py has no class named PythonPredictor"
    source = "class PythonPredictor:\n    def handle_batch(self):\n        pass\n"
    message = check_error(tmp_path, source, "predictor.py", legacy_predictor=True)
    assert message == "predictor.py: class PythonPredictor has no method predict"


def test_check_runs_in_project_dir_with_env(tmp_path):
    write(tmp_path, {"values.json": '{"k": 1}', ".env": "FROM_DOTENV=yes\nBOTH=dotenv\n"})
    write(tmp_path, {"helpers.py": "HELP = 1\n"})
    source = (
        """
import json, os
from helpers import HELP
print("handler output must not confuse the check")
VALUES = json.load(open("values.json"))
assert VALUES == {"k": 1}
assert os.environ["FROM_DOTENV"] == "yes", os.environ.get("FROM_DOTENV")
assert os.environ["FROM_SPEC"] == "3"
assert os.environ["BOTH"] == "spec"
"""
        + OK_HANDLER
    )
    env = {"FROM_SPEC": "3", "BOTH": "spec"}
    assert check(tmp_path, source, env=env).class_name == "Handler"


def test_check_python_path(tmp_path):
    write(tmp_path, {"src/pkg_helpers.py": "VALUE = 42\n"})
    source = "from pkg_helpers import VALUE\n" + OK_HANDLER
    sig = check(tmp_path, source, "src/handler.py", python_path="src")
    assert sig.class_name == "Handler"
    message = check_error(tmp_path / "other", "import pkg_helpers\n" + OK_HANDLER, "src/h.py")
    assert message == (
        "src/h.py: import failed: ModuleNotFoundError: No module named 'pkg_helpers'"
    )


def test_check_survives_hard_exit_and_threads(tmp_path):
    source = "import os\nos._exit(7)\n"
    assert check_error(tmp_path, source) == "handler.py: the handler check exited with code 7"
    threaded = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n"
    assert check(tmp_path, threaded + OK_HANDLER).class_name == "Handler"


def test_check_timeout(tmp_path):
    write(tmp_path, {"handler.py": "import time\ntime.sleep(60)\n"})
    message = error_of(
        HandlerError, check_handler, tmp_path, HandlerSpec(path="handler.py"), timeout=1
    )
    assert message == "handler.py: importing the handler took longer than 1 s"
