"""A project's dependency files (Cortex's ``handler.dependencies``) and their checks at deploy.

``pip`` (default ``requirements.txt``), ``conda`` (default ``conda-packages.txt``) and ``shell``
(default ``dependencies.sh``) name files relative to the project directory. A default file is
used when it exists; a file named explicitly must exist. Workers install them in Cortex's order,
:data:`INSTALL_ORDER` (see :mod:`dask_batchapi.worker.deps`). At deploy, every line of the pip
file must parse (a requirement as ``packaging`` reads it, a pip option, a path or a URL), and a
conda file needs conda, mamba or micromamba on this machine.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from dask_batchapi.errors import SpecError

logger = logging.getLogger(__name__)

DEFAULTS = {"pip": "requirements.txt", "conda": "conda-packages.txt", "shell": "dependencies.sh"}
INSTALL_ORDER = ("shell", "conda", "pip")  # as Cortex: system packages, conda, then pip
CONDA_TOOLS = ("conda", "mamba", "micromamba")
# Options pip accepts in a requirements file; the ones that name a file are checked too.
_FILE_OPTIONS = ("-r", "--requirement", "-c", "--constraint")
_PIP_OPTIONS = (
    *_FILE_OPTIONS,
    *("-i", "--index-url", "--extra-index-url", "--no-index", "-f", "--find-links"),
    *("-e", "--editable", "--pre", "--trusted-host", "--prefer-binary", "--only-binary"),
    *("--no-binary", "--require-hashes", "--use-feature", "--config-settings"),
)
_PATH_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tar.bz2", ".tgz")


def dependency_files(root: str | Path, dependencies: Any, where: str) -> dict[str, str]:
    """``{kind: relative path}`` of the dependency files the project has, in install order.

    ``dependencies`` is a :class:`~dask_batchapi.spec.api_spec.Dependencies`. A missing file
    that the spec names explicitly (not its default) raises :class:`SpecError`.

    >>> dependency_files("my-api", Dependencies(), "cortex.yaml: handler.dependencies")  # doctest: +SKIP
    {'pip': 'requirements.txt'}
    """
    root = Path(root).resolve()
    found = {}
    for kind in INSTALL_ORDER:
        relative = getattr(dependencies, kind)
        target = (root / relative).resolve()
        if not target.is_relative_to(root):
            raise SpecError(f"{where}.{kind} {relative!r} points outside the project {root}")
        if target.is_file():
            found[kind] = relative
        elif relative != DEFAULTS[kind]:
            raise SpecError(f"{where}.{kind} {relative!r} not found in {root}")
    return found


def find_conda() -> str | None:
    """The conda-compatible installer on this machine's PATH (conda, mamba, micromamba)."""
    for tool in CONDA_TOOLS:
        found = shutil.which(tool)
        if found:
            return found
    return None


def check_dependencies(root: str | Path, dependencies: Any, where: str) -> dict[str, str]:
    """Check the project's dependency files at deploy; returns :func:`dependency_files`."""
    files = dependency_files(root, dependencies, where)
    if "pip" in files:
        check_requirements(Path(root) / files["pip"], files["pip"])
    if "conda" in files and find_conda() is None:
        raise SpecError(
            f"{where}.conda: {files['conda']} needs conda or mamba, and neither is on PATH;"
            " install one on the workers, or list the packages in requirements.txt instead"
        )
    return files


def logical_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of a requirements file as pip reads it: continuation lines
    joined, comments and blank lines dropped.

    >>> logical_lines("a \\\\\\n  >=1  # pinned\\n\\n# note\\nb\\n")
    [(1, 'a >=1'), (5, 'b')]
    """
    lines, pending, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        line = raw if raw.startswith("#") else raw.split(" #", 1)[0].split("\t#", 1)[0]
        line = "" if line.lstrip().startswith("#") else line
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line.strip()).strip()
        pending = ""
        if line:
            lines.append((start, line))
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines


def check_requirements(path: Path, shown: str, _seen: frozenset = frozenset()) -> None:
    """Raise :class:`SpecError` naming the file and line of the first line pip cannot read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{shown}: cannot be read: {error}") from None
    for number, line in logical_lines(text):
        problem = _option_problem(path, line, _seen) if line.startswith("-") else None
        if not line.startswith("-"):
            problem = _requirement_problem(line)
        if problem:
            raise SpecError(f"{shown}:{number}: {problem}")


def _option_problem(path: Path, line: str, seen: frozenset) -> str | None:
    name, _, value = line.replace("=", " ", 1).partition(" ")
    if name not in _PIP_OPTIONS:
        return (
            f"unknown pip option {name!r} (a requirements file accepts {', '.join(_PIP_OPTIONS)})"
        )
    if name not in _FILE_OPTIONS or "://" in value:
        return None
    included = (path.parent / value.strip()).resolve()
    if not included.is_file():
        return f"{name} {value.strip()}: no such file next to {path.name}"
    if included not in seen:
        check_requirements(included, value.strip(), seen | {path.resolve()})
    return None


def _requirement_problem(line: str) -> str | None:
    requirement = line.split(" --", 1)[0].split(" -", 1)[0].strip()  # --hash=... and the like
    if _is_path_or_url(requirement):
        return None
    try:
        Requirement(requirement)
    except InvalidRequirement as error:
        reason = str(error).splitlines()[0]
        return f"invalid requirement {requirement!r}: {reason}"
    return None


def _is_path_or_url(text: str) -> bool:
    head = text.split(";", 1)[0].strip()
    return (
        "://" in head
        or head.startswith((".", "/", "~"))
        or head.endswith(_PATH_SUFFIXES)
        or os.sep in head
    )
