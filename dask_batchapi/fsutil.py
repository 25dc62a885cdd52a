"""Small filesystem helpers shared by the store, the output writer and the runners.

Everything written on the local disk for a user is private to that user: directories are
created 0700 and files 0600, with the mode given at creation (``os.open`` / ``os.mkdir``), so
that no umask and no window between create and ``chmod`` can expose them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
import tempfile
import uuid
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from dask_batchapi.errors import UnsafeDirectory

logger = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dirs(path: str | os.PathLike) -> None:
    """Create ``path`` and its missing parents 0700 (existing ones are left as they are).

    ``os.makedirs`` gives intermediate directories the default mode: each level is made here.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    make_private_dirs(os.path.dirname(path))
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, PRIVATE_DIR)


def _write_private(path: str, data: bytes, flags: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
    finally:
        if fd >= 0:
            os.close(fd)


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` so that readers see either nothing or the whole object.

    Local files are written 0600 beside the target and renamed into place (the temporary file
    is removed if the write fails, so a full disk leaves nothing behind); object stores (S3,
    GCS) make a single PUT visible atomically, so the bytes go up in one request.
    """
    if isinstance(fs, LocalFileSystem):
        make_private_dirs(os.path.dirname(path) or ".")
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            _write_private(tmp, data, os.O_EXCL)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` only if nothing is there: True if we created it.

    Locally an ``O_CREAT | O_EXCL`` open; on S3 a conditional PUT (``If-None-Match: *``). Of
    any number of concurrent callers, exactly one gets True.
    """
    if isinstance(fs, LocalFileSystem):
        make_private_dirs(os.path.dirname(path) or ".")
        try:
            _write_private(path, data, os.O_EXCL)
        except FileExistsError:
            return False
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except OSError as exc:  # s3fs reports a failed precondition as a generic error (412)
        if "412" in str(exc) or "Precondition" in str(exc):
            return False
        raise
    return True


def check_private_dir(path: Path) -> None:
    """Raise :class:`UnsafeDirectory` unless ``path`` is a real directory of ours, 0700."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise UnsafeDirectory(f"{path} belongs to uid {info.st_uid}, not to us ({os.getuid()})")
    if info.st_mode & 0o077:
        mode = oct(info.st_mode & 0o777)
        raise UnsafeDirectory(f"{path} is open to other users (mode {mode}); expected 0700")


def private_runtime_dir(name: str) -> Path:
    """A directory of this user's only, for sockets and runner logs: ``$TMPDIR/<name>-<uid>``.

    Created 0700 if absent. If it exists but belongs to another user or is open to others (a
    squatter could read our logs or answer on our sockets), it is not used:
    :class:`UnsafeDirectory` says why in one line.
    """
    path = Path(tempfile.gettempdir()) / f"{name}-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, PRIVATE_DIR)
    try:
        check_private_dir(path)
    except UnsafeDirectory as exc:
        raise UnsafeDirectory(
            f"refusing to use {exc}: remove it, or set TMPDIR to a directory of your own"
        ) from None
    return path


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a connected Unix socket (Linux)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def open_private_log(path: str | os.PathLike):
    """Open ``path`` for appending, created 0600 (a runner's log may hold job details)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE), "ab")
