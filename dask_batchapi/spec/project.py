"""The project directory: pack it for the workers, unpack it safely, check its handler.

Packing ships everything except ``*.pyc/.pyo/.pyd``, ``__pycache__``, names starting with ``.``
(the root ``.env`` excepted: workers load it), the spec file, and what the root's
``.cortexignore`` / ``.batchapiignore`` match (gitignore syntax). Symbolic links are followed
only when they point inside the project. The archive is deterministic: the same content gives
the same ``sha256``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pathspec
from dotenv import dotenv_values

from dask_batchapi.errors import HandlerError, SpecError
from dask_batchapi.spec import _handler_check
from dask_batchapi.spec.api_spec import HandlerSpec
from dask_batchapi.spec.dependencies import dependency_files
from dask_batchapi.spec.unpack import unpack_project  # noqa: F401 - its former home

logger = logging.getLogger(__name__)

DEFAULT_MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
IGNORE_FILES = (".cortexignore", ".batchapiignore")
_EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".pyd")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_UNIX = 3  # ZipInfo.create_system, fixed so that archives are identical on every platform
# Run _handler_check.py as __main__ without importing dask_batchapi (and dask) in the child.
_BOOTSTRAP = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


@dataclass(frozen=True)
class ProjectArchive:
    """A packed project: zip bytes, their sha256 (hex), and the relative paths inside."""

    data: bytes
    sha256: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class HandlerSignature:
    """What the handler class declares: which arguments each method takes."""

    class_name: str
    init_args: tuple[str, ...]
    batch_method: str
    batch_args: tuple[str, ...]
    complete_method: str | None

    def to_dict(self) -> dict:
        """Return a JSON-able dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, d: dict) -> HandlerSignature:
        """Rebuild a signature from :meth:`to_dict` output."""
        d = dict(d, init_args=tuple(d["init_args"]), batch_args=tuple(d["batch_args"]))
        return cls(**d)


# --------------------------------------------------------------------------- packing


@dataclass
class _Walker:
    """Collects the files to ship, following only the links that stay inside ``root``."""

    root: Path
    spec_name: str
    ignore: pathspec.PathSpec | None
    found: list[tuple[str, Path, int]] = field(default_factory=list)

    def walk(self, directory: Path, prefix: str, ancestors: frozenset[Path]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            shown = prefix or "the project directory"
            raise SpecError(f"cannot list {shown} in {self.root}: {error.strerror}") from None
        for entry in entries:
            rel = prefix + entry.name
            target = None if self._excluded(entry.name, rel) else self._target(entry, rel)
            if target is None:
                continue
            if target.is_dir():
                self._enter(target, rel, ancestors)
            elif target.is_file() and not self._ignored(rel):
                self.found.append((rel, target, target.stat().st_size))

    def _enter(self, target: Path, rel: str, ancestors: frozenset[Path]) -> None:
        if target in ancestors:
            logger.warning("skipping %s: a symbolic link loop back to %s", rel, target)
        elif not self._ignored(rel + "/"):
            self.walk(target, rel + "/", ancestors | {target})

    def _excluded(self, name: str, rel: str) -> bool:
        hidden = name.startswith(".") and rel != ".env"
        special = name == "__pycache__" or name.endswith(_EXCLUDED_SUFFIXES)
        return hidden or special or rel == self.spec_name

    def _ignored(self, rel: str) -> bool:
        return self.ignore is not None and self.ignore.match_file(rel)

    def _target(self, entry: os.DirEntry, rel: str) -> Path | None:
        if not entry.is_symlink():
            return Path(entry.path)
        try:
            target = Path(entry.path).resolve()
        except RuntimeError:  # a loop of links
            logger.warning("skipping %s: a symbolic link loop", rel)
            return None
        if not target.is_relative_to(self.root):
            logger.warning("skipping %s: symbolic link to %s, outside the project", rel, target)
            return None
        if not target.exists():
            logger.warning("skipping %s: broken symbolic link to %s", rel, target)
            return None
        return target


def _ignore_spec(root: Path) -> pathspec.PathSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        if (root / name).is_file():
            lines += (root / name).read_text(encoding="utf-8").splitlines()
    if not lines:
        return None
    if hasattr(pathspec, "GitIgnoreSpec"):
        return pathspec.GitIgnoreSpec.from_lines(lines)
    return pathspec.PathSpec.from_lines("gitwildmatch", lines)


def _mb(n: int) -> str:
    mb = n / 2**20
    return f"{mb:.1f}".removesuffix(".0") if mb >= 1 else f"{mb:.2f}"


def _too_big(root: Path, total: int, limit: int) -> SpecError:
    return SpecError(
        f"project {root} is {_mb(total)} MB, over the limit of {_mb(limit)} MB;"
        " add large files to .cortexignore"
    )


def _zip_info(rel: str, path: Path) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(rel, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = _UNIX
    perms = 0o755 if path.stat().st_mode & 0o111 else 0o644
    info.external_attr = (stat.S_IFREG | perms) << 16
    return info


def _read(path: Path, rel: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SpecError(f"cannot read {rel} in the project: {error.strerror}") from None


def pack_project(
    project_dir: str | Path, spec_file: str | None, max_bytes: int | None = None
) -> ProjectArchive:
    """Pack the project directory into a deterministic zip archive.

    Parameters
    ----------
    project_dir
        The project directory.
    spec_file
        The spec file's name in the project root; it is left out of the archive. None: the
        spec was given apart (a dict), every file ships.
    max_bytes
        Limit on the files' total (uncompressed) size; default 256 MiB.

    >>> pack_project("my-api", "batchapi.yaml").files  # doctest: +SKIP
    ('handler.py', 'values.json')
    """
    root = Path(project_dir).resolve()
    if not root.is_dir():
        raise SpecError(f"project directory {str(project_dir)!r} not found")
    limit = DEFAULT_MAX_ARCHIVE_BYTES if max_bytes is None else max_bytes
    walker = _Walker(root, Path(spec_file).name if spec_file else "", _ignore_spec(root))
    walker.walk(root, "", frozenset({root}))
    files = sorted(walker.found)
    total = sum(size for _, _, size in files)
    if total > limit:
        raise _too_big(root, total, limit)
    buffer, written = io.BytesIO(), 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel, path, _ in files:
            data = _read(path, rel)
            written += len(data)
            if written > limit:  # a file grew since it was listed
                raise _too_big(root, written, limit)
            archive.writestr(_zip_info(rel, path), data)
    data = buffer.getvalue()
    names = tuple(rel for rel, _, _ in files)
    return ProjectArchive(data=data, sha256=hashlib.sha256(data).hexdigest(), files=names)


# --------------------------------------------------------------------------- unpacking


# (in dask_batchapi.spec.unpack)


# --------------------------------------------------------------------------- handler


def read_env_file(project_dir: str | Path) -> dict[str, str]:
    """Return the variables of the project's ``.env`` file ({} if it has none).

    >>> read_env_file("my-api")  # doctest: +SKIP
    {'MODEL_BUCKET': 's3://models'}
    """
    path = Path(project_dir) / ".env"
    if not path.is_file():
        return {}
    try:
        values = dotenv_values(path, encoding="utf-8")
    except (UnicodeDecodeError, ValueError) as error:
        raise SpecError(f"{path} is not a text file of NAME=value lines: {error}") from None
    if any("\0" in k or "\0" in (v or "") for k, v in values.items()):
        raise SpecError(f"{path} holds a NUL byte: it is not a text file of NAME=value lines")
    return {k: v for k, v in values.items() if v is not None}


def signature_args(func: Callable, allowed: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Return the names in ``allowed`` that ``func`` declares (``self`` left out), in order.

    ``**kwargs`` accepts every allowed name. Any other argument name raises
    :class:`~dask_batchapi.errors.HandlerError`.

    >>> signature_args(lambda self, payload: None, ("payload", "batch_id"), "f")
    ('payload',)
    """
    try:
        return _handler_check.signature_args(func, allowed, where)
    except _handler_check.HandlerProblem as error:
        raise HandlerError(str(error)) from None


def _check_env(root: Path, handler: HandlerSpec) -> dict[str, str]:
    # As on the workers (runtime.py): .env first, the spec's handler.env wins.
    env = {**os.environ, **read_env_file(root), **handler.env}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the user's project
    return env


def _run_check(root: Path, handler: HandlerSpec, request: dict, timeout: float) -> int:
    """Run the check in a new session, output to a file; return its exit code."""
    log = Path(request["result_path"]).with_name("output.log")
    command = [sys.executable, "-c", _BOOTSTRAP, _handler_check.__file__]
    env = _check_env(root, handler)
    with open(log, "wb") as out:
        # A new session, so that a timeout kills whatever the handler started, too.
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            cwd=root,
            env=env,
            start_new_session=True,
        )
        try:
            process.communicate(json.dumps(request).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            message = f"{handler.path}: importing the handler took longer than {timeout:g} s"
            raise HandlerError(message) from None
    return process.returncode


def _last_line(path: Path) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else ""


def check_handler(
    project_dir: str | Path, handler: HandlerSpec, timeout: float = 120
) -> HandlerSignature:
    """Import the handler file in a subprocess and return its class's signature.

    The subprocess runs in the project directory with the ``.env`` values and ``handler.env``
    in its environment, as a worker would. Problems raise a one-line
    :class:`~dask_batchapi.errors.HandlerError`.

    >>> check_handler("my-api", HandlerSpec(path="handler.py")).batch_args  # doctest: +SKIP
    ('payload', 'batch_id')
    """
    root = Path(project_dir).resolve()
    request = {
        "project_dir": str(root),
        "handler_path": handler.path,
        "legacy": handler.legacy_predictor,
        "sys_path": [str((root / (handler.python_path or ".")).resolve()), str(root)],
        "package_root": str(Path(__file__).resolve().parents[1]),
        "has_dependencies": bool(dependency_files(root, handler.dependencies, handler.path)),
    }
    with tempfile.TemporaryDirectory(prefix="batchapi-check-") as tmp:
        request["result_path"] = str(Path(tmp) / "result.json")
        code = _run_check(root, handler, request, timeout)
        result_file = Path(request["result_path"])
        if not result_file.is_file():
            last = _last_line(result_file.with_name("output.log"))
            detail = f": {last}" if last else ""
            message = f"{handler.path}: the handler check exited with code {code}{detail}"
            raise HandlerError(message)
        result = json.loads(result_file.read_text(encoding="utf-8"))
    if not result["ok"]:
        raise HandlerError(result["error"])
    signature = dict(result["signature"])
    if signature.pop("static", None):
        logger.warning(
            "%s imports what only the workers install (%s); its signatures were read from"
            " its source",
            handler.path,
            result["signature"]["static"].split(": ", 2)[-1],
        )
    return HandlerSignature.from_dict(signature)
