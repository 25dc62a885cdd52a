"""Install a job's dependency files on a worker, as Cortex did, without touching the worker.

In Cortex's order (:data:`~dask_batchapi.spec.dependencies.INSTALL_ORDER`), before the Handler
is built:

- ``shell`` (``dependencies.sh``) runs with ``bash`` in the project directory, for every job
  on every worker (as Cortex ran it at every replica start);
- ``conda`` (``conda-packages.txt``) is created as a conda prefix, ``conda create --file``;
- ``pip`` (``requirements.txt``) is installed with the worker's own interpreter,
  ``python -m pip install --target``, in the project directory (so ``--find-links ./wheels``
  finds the project's wheels).

Conda and pip install into a per-user cache (``batchapi.dependencies.cache-dir``, mode 0700),
one folder per hash of the file's content, of the files it names (``-r``, ``--find-links``
folders, local wheels) and of the interpreter. A later job with the same files reuses the
folder without installing anything; a lock file per folder makes one worker of a host install
while the others wait. A folder is used only once its install finished (a ``.complete`` marker).

The folders go on ``sys.path`` (and their ``bin`` on ``PATH``) for this job's handler only; the
job plugin removes them, and the modules imported from them, at teardown. Every line the
installer prints goes to the job's log; a failed install raises :class:`DependencyError` with
the installer's last error lines.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dask_batchapi import config
from dask_batchapi.errors import DependencyError
from dask_batchapi.spec.dependencies import INSTALL_ORDER, find_conda, logical_lines

logger = logging.getLogger("batchapi.dependencies")  # its lines are the job's install log

_MARKER = ".complete"
_TAIL = 40  # installer lines kept for the error
_INCLUDES = ("-r", "--requirement", "-c", "--constraint")
_LOCAL_OPTIONS = (*_INCLUDES, "-f", "--find-links", "-e", "--editable")


@dataclass
class Installed:
    """What a job's handler sees of its installed dependencies."""

    paths: list[str] = field(default_factory=list)  # sys.path entries, first wins
    bin_dirs: list[str] = field(default_factory=list)  # PATH entries
    root: str | None = None  # the cache they live in (other jobs' folders are there too)


def cache_root() -> Path:
    """The user's private dependency cache (created 0700; refused if someone else owns it)."""
    configured = config.get("dependencies.cache-dir")
    if configured:
        root = Path(os.path.expanduser(configured))
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        root = Path(base) / "dask-batchapi" / "deps"
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = root.stat()
    except OSError as error:
        raise DependencyError(
            f"cannot create the dependency cache {root}: {error.strerror};"
            " set batchapi.dependencies.cache-dir to a writable folder"
        ) from None
    if info.st_uid != os.getuid():
        raise DependencyError(f"dependency cache {root} belongs to another user; refused")
    if info.st_mode & 0o077:
        root.chmod(0o700)
    return root


def install_dependencies(project_dir: Path, dependencies: dict[str, str]) -> Installed:
    """Install the dependency files of ``handler.dependencies`` (``{kind: relative path}``)
    that the project has; see the module doc.

    >>> install_dependencies(Path("my-api"), {"pip": "requirements.txt"})  # doctest: +SKIP
    Installed(paths=['/home/me/.cache/dask-batchapi/deps/pip-3f2a...'], bin_dirs=[], ...)
    """
    installed = Installed()
    for kind in INSTALL_ORDER:
        relative = dependencies.get(kind)
        if relative and (project_dir / relative).is_file():
            _INSTALLERS[kind](project_dir, relative, installed)
    if installed.paths or installed.bin_dirs:
        installed.root = str(cache_root())
    return installed


# -- shell ----------------------------------------------------------------------------------


def _run_shell(project_dir: Path, relative: str, installed: Installed) -> None:
    bash = shutil.which("bash")
    if bash is None:
        raise DependencyError(f"{relative} needs bash, which is not on this worker's PATH")
    logger.info("running %s", relative)
    _run([bash, relative], project_dir, f"bash {relative}")


# -- conda ----------------------------------------------------------------------------------


def _install_conda(project_dir: Path, relative: str, installed: Installed) -> None:
    tool = find_conda()
    if tool is None:
        raise DependencyError(f"{relative} needs conda or mamba, neither is on this worker's PATH")
    target = _cached(project_dir, relative, "conda")
    command = [tool, "create", "--yes", "--quiet", "--prefix", str(target), "--file"]
    what = f"{Path(tool).name} create --file {relative}"
    _install_once(target, [*command, str(project_dir / relative)], project_dir, what)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = target / "lib" / version / "site-packages"
    if site.is_dir():
        installed.paths.insert(0, str(site))
    installed.bin_dirs.insert(0, str(target / "bin"))


# -- pip ------------------------------------------------------------------------------------


def _install_pip(project_dir: Path, relative: str, installed: Installed) -> None:
    target = _cached(project_dir, relative, "pip")
    command = [sys.executable, "-m", "pip", "install", "--target", str(target)]
    command += ["--no-input", "--disable-pip-version-check", "--progress-bar", "off"]
    what = f"pip install -r {relative}"
    _install_once(target, [*command, "-r", str(project_dir / relative)], project_dir, what)
    installed.paths.insert(0, str(target))
    if (target / "bin").is_dir():
        installed.bin_dirs.insert(0, str(target / "bin"))


_INSTALLERS = {"shell": _run_shell, "conda": _install_conda, "pip": _install_pip}


# -- the cache ------------------------------------------------------------------------------


def _cached(project_dir: Path, relative: str, kind: str) -> Path:
    digest = hashlib.sha256()
    platform = f"{kind}\0{sys.version}\0{sysconfig.get_platform()}\0{sys.implementation.cache_tag}"
    digest.update(platform.encode())
    _digest_requirements(digest, project_dir / relative, set())
    return cache_root() / f"{kind}-{digest.hexdigest()[:32]}"


def _digest_requirements(digest, path: Path, seen: set[Path]) -> None:
    """The file, and what it names that lives on this disk: included files, --find-links
    folders, local wheels and source trees (a new wheel under the same name installs anew)."""
    seen.add(path.resolve())
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    digest.update(text.encode("utf-8", "surrogateescape"))
    for _, line in logical_lines(text):
        name, _, value = line.replace("=", " ", 1).partition(" ")
        local = path.parent / (value.strip() if name in _LOCAL_OPTIONS else line.split(";")[0])
        try:
            exists = local.exists() and local.resolve() not in seen
        except (OSError, ValueError):  # a requirement such as "numpy>=1" is no path
            continue
        if exists and name in _INCLUDES:
            _digest_requirements(digest, local, seen)
        elif exists:
            _digest_tree(digest, local)


def _digest_tree(digest, path: Path) -> None:
    # names relative to the folder itself: the project's own path differs per job
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files[:10_000]:
        digest.update(str(file.relative_to(path if path.is_dir() else path.parent)).encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())


@contextmanager
def _locked(target: Path):
    """Hold ``<target>.lock``: one installer per folder on this host at a time."""
    fd = os.open(f"{target}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another worker installing into %s", target.name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _install_once(target: Path, command: list[str], cwd: Path, what: str) -> None:
    with _locked(target):
        if (target / _MARKER).is_file():
            logger.info("%s: reusing the installed cache %s (no install)", what, target.name)
            return
        shutil.rmtree(target, ignore_errors=True)  # an install that died halfway
        logger.info("%s: installing into the cache %s", what, target.name)
        try:
            _run(command, cwd, what)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        target.mkdir(parents=True, exist_ok=True)
        (target / _MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _run(command: list[str], cwd: Path, what: str) -> None:
    """Run an installer, its output line by line into the job's log; DependencyError if it
    fails or runs past ``batchapi.dependencies.install-timeout``."""
    timeout = float(config.get("dependencies.install-timeout"))
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL)
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    killed = threading.Event()
    timer = threading.Timer(timeout, _kill, (process, killed))
    timer.start()
    try:
        for line in process.stdout:
            if line.strip():
                tail.append(line.rstrip())
                logger.log(_level(line), line.rstrip())
        code = process.wait()
    finally:
        timer.cancel()
    if killed.is_set():
        raise DependencyError(f"{what} took longer than {timeout:g} s", "\n".join(tail))
    if code:
        raise DependencyError(f"{what} failed (exit {code}): {_errors(tail)}", "\n".join(tail))


def _kill(process: subprocess.Popen, killed: threading.Event) -> None:
    """The installer ran past its time: kill it and whatever it started."""
    killed.set()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _level(line: str) -> int:
    """pip's and conda's ``ERROR:`` / ``WARNING:`` lines keep their level in the job's log."""
    head = line.lstrip()[:8].upper()
    if head.startswith("ERROR"):
        return logging.ERROR
    return logging.WARNING if head.startswith("WARNING") else logging.INFO


def _errors(tail: collections.deque[str]) -> str:
    """The installer's last error lines (pip's ``ERROR:`` lines), else its last lines."""
    errors = [line.strip() for line in tail if line.lstrip().upper().startswith("ERROR")]
    return " | ".join((errors or list(tail) or ["no output"])[-3:])
