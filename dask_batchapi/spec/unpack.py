"""Unpacking a project archive on a worker: safely, privately, and within limits.

Every member is checked before anything is written (absolute paths, ``..``, symbolic links),
the archive's declared size and file count are capped before extraction and the bytes really
written are counted while streaming (a zip bomb stops at the limit, not at the disk's end),
and everything is created private to the worker's user: directories 0700, files 0600 (0700
when executable), so a project's ``.env`` is never readable by other users of the machine.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from dask_batchapi import config
from dask_batchapi.errors import LimitError, SpecError
from dask_batchapi.fsutil import PRIVATE_DIR, PRIVATE_FILE, make_private_dirs

logger = logging.getLogger(__name__)

DEFAULT_MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_FILES = 20_000
_CHUNK = 1 << 20


def unpack_limits() -> tuple[int, int]:
    """(bytes, files) a project may unpack to: ``batchapi.unpack-max-bytes`` / ``-max-files``."""
    max_bytes = config.get("unpack-max-bytes", DEFAULT_MAX_UNPACKED_BYTES)
    return int(max_bytes), int(config.get("unpack-max-files", DEFAULT_MAX_FILES))


def _destination(base: Path, info: zipfile.ZipInfo) -> Path:
    name = info.filename.replace("\\", "/")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise SpecError(f"project archive member {info.filename!r} is a symbolic link; refused")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in PurePosixPath(name).parts:
        raise SpecError(f"project archive member {info.filename!r} has an unsafe path; refused")
    destination = (base / name).resolve()
    if not destination.is_relative_to(base):
        raise SpecError(f"project archive member {info.filename!r} points outside {base}; refused")
    return destination


def _check_declared(infos: list[zipfile.ZipInfo], max_bytes: int, max_files: int) -> None:
    if len(infos) > max_files:
        raise LimitError(
            f"project archive holds {len(infos)} files, over the limit of {max_files}"
            " (batchapi.unpack-max-files)"
        )
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise LimitError(
            f"project archive unpacks to {total} bytes, over the limit of {max_bytes} bytes"
            " (batchapi.unpack-max-bytes)"
        )


class _Budget:
    """Bytes left to write: the sizes a zip declares may lie, the bytes written do not."""

    def __init__(self, max_bytes: int):
        self.left, self.max_bytes = max_bytes, max_bytes

    def take(self, n: int, name: str) -> None:
        self.left -= n
        if self.left < 0:
            raise LimitError(
                f"project archive unpacks to more than {self.max_bytes} bytes (at {name!r});"
                " refused (batchapi.unpack-max-bytes)"
            )


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: _Budget) -> None:
    make_private_dirs(dest.parent)
    mode = PRIVATE_DIR if (info.external_attr >> 16) & 0o111 else PRIVATE_FILE
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out, archive.open(info) as src:
        while chunk := src.read(_CHUNK):
            budget.take(len(chunk), info.filename)
            out.write(chunk)


def unpack_project(
    data: bytes,
    target: str | Path,
    max_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> Path:
    """Unpack a project archive into ``target`` (created 0700 if needed) and return ``target``.

    Unsafe members are refused with a :class:`~dask_batchapi.errors.SpecError`; an archive
    over ``max_bytes`` unpacked or ``max_files`` members with a
    :class:`~dask_batchapi.errors.LimitError` (and nothing of it is left in ``target``).

    >>> unpack_project(pack_project("my-api", "batchapi.yaml").data, "/tmp/x")  # doctest: +SKIP
    PosixPath('/tmp/x')
    """
    target = Path(target)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise SpecError(f"project archive is not a valid zip file: {error}") from None
    with archive:
        infos = archive.infolist()
        _check_declared(infos, max_bytes, max_files)
        make_private_dirs(target)
        base = target.resolve()
        members = [(info, _destination(base, info)) for info in infos]
        budget = _Budget(max_bytes)
        try:
            for info, destination in members:
                if info.is_dir():
                    make_private_dirs(destination)
                else:
                    _extract(archive, info, destination, budget)
        except (LimitError, zipfile.BadZipFile, OSError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            if isinstance(exc, LimitError):
                raise
            raise SpecError(f"project archive cannot be unpacked in {target}: {exc}") from None
    return target
