"""Listing a job's input files: Cortex's ``s3_paths`` prefixes, ``includes`` and ``excludes``.

Each ``s3_paths`` entry is a key *prefix*, not a directory: ``s3://b/images/img`` matches
``s3://b/images/img_1.png`` and ``s3://b/images/img/x.png``. It works for any fsspec URL
(``s3://``, ``file://``, ``memory://``, plain local paths). URLs come back in the spelling of
the entry they were found under (scheme kept: ``s3://bucket/key``); plain local paths come back
absolute, because handlers run in the project directory, not in the submitter's.

Globs are matched against that full URL with ``/`` as the separator (Cortex's gobwas/glob
semantics): ``*``, ``?`` and ``[...]`` stay within one path segment, ``**`` crosses segments,
``{a,b}`` is an alternative, ``\\`` escapes. A file is kept if any include matches (all are
kept without includes), then dropped if any exclude matches.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache

from fsspec.core import url_to_fs
from fsspec.utils import get_protocol

from dask_batchapi.errors import SourceError, SubmissionError

__all__ = ["filter_urls", "glob_to_regex", "list_files"]

logger = logging.getLogger(__name__)

# Listing happens at submit time, where an unreachable or silent endpoint must fail in seconds,
# not after botocore's and s3fs's minutes of retries. Caller's storage options win over these.
# botocore's max_attempts counts retries: 1 means two attempts in all.
_S3_LISTING_DEFAULTS = {
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 1}},
    # a private instance, so that its s3fs retry count can be lowered (see _S3_LISTING_RETRIES)
    "skip_instance_cache": True,
}
# s3fs retries read timeouts itself, on top of botocore; its count is not a constructor option.
_S3_LISTING_RETRIES = 1
_S3_PROTOCOLS = ("s3", "s3a")


def list_files(
    s3_paths: Sequence[str],
    includes: Sequence[str] = (),
    excludes: Sequence[str] = (),
    storage_options: dict | None = None,
) -> list[str]:
    """Sorted, de-duplicated URLs of the files under the prefixes that pass the globs.

    Raises :class:`SourceError` when nothing matches or a location cannot be listed
    (missing bucket, access denied, unreachable endpoint).

    >>> list_files(["s3://my-bucket/images/img"], includes=["**.png"])  # doctest: +SKIP
    ['s3://my-bucket/images/img/a.png', 's3://my-bucket/images/img_1.png']
    """
    if isinstance(s3_paths, str):
        s3_paths = [s3_paths]
    found: dict[tuple[str, str], str] = {}
    for prefix in s3_paths:
        for key, url in _list_prefix(prefix, storage_options):
            found.setdefault(key, url)
    urls = filter_urls(sorted(found.values()), includes, excludes)
    if not urls:
        raise SourceError(
            f"no files match s3_paths {list(s3_paths)} "
            f"(includes {list(includes)}, excludes {list(excludes)})"
        )
    logger.debug("listed %d files under %s", len(urls), list(s3_paths))
    return urls


def filter_urls(
    urls: Iterable[str], includes: Sequence[str] = (), excludes: Sequence[str] = ()
) -> list[str]:
    """Keep URLs that match any include (all, without includes), then drop any exclude match.

    >>> filter_urls(["s3://b/a.jpg", "s3://b/x/c.jpg"], includes=["s3://b/*.jpg"])
    ['s3://b/a.jpg']
    """
    keep = [_compiled(glob) for glob in includes]
    drop = [_compiled(glob) for glob in excludes]
    return [
        url
        for url in urls
        if (not keep or any(r.fullmatch(url) for r in keep))
        and not any(r.fullmatch(url) for r in drop)
    ]


def glob_to_regex(pattern: str) -> str:
    """Translate a glob into a regular expression that must match a whole URL.

    ``*`` -> any run within a segment, ``**`` -> any run, ``?`` -> one character of a segment,
    ``[abc]`` / ``[a-z]`` / ``[!abc]`` -> one character of a segment, ``{a,b}`` -> either.

    >>> glob_to_regex("s3://b/*.jpg")
    's3://b/[^/]*\\\\.jpg'
    """
    regex, end = _translate(pattern, 0, nested=False)
    assert end == len(pattern)
    return regex


@lru_cache(maxsize=256)
def _compiled(glob: str) -> re.Pattern:
    return re.compile(glob_to_regex(glob), re.DOTALL)


def _translate(pattern: str, i: int, nested: bool) -> tuple[str, int]:
    """Translate from ``i`` to the end, or (``nested``) to the ``,`` / ``}`` that ends an
    alternative of a ``{...}``; return the regex and where it stopped."""
    out: list[str] = []
    while i < len(pattern):
        char = pattern[i]
        if nested and char in ",}":
            break
        if pattern.startswith("**", i):
            out.append(".*")
            while i < len(pattern) and pattern[i] == "*":
                i += 1
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            regex, i = _char_class(pattern, i)
            out.append(regex)
            continue
        elif char == "{":
            regex, i = _alternatives(pattern, i)
            out.append(regex)
            continue
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out), i


def _char_class(pattern: str, i: int) -> tuple[str, int]:
    j = i + 1
    negate = pattern[j : j + 1] in ("!", "^")
    j += negate
    body_start = j
    if pattern[j : j + 1] == "]":  # a leading ']' is a literal, as in fnmatch
        j += 1
    j = pattern.find("]", j)
    if j < 0:
        raise SubmissionError(f"invalid glob {pattern!r}: '[' at position {i} is never closed")
    body = "".join("\\" + c if c in "\\]^[&~|" else c for c in pattern[body_start:j])
    regex = f"[^{body}/]" if negate else f"(?:(?!/)[{body}])"
    return regex, j + 1


def _alternatives(pattern: str, i: int) -> tuple[str, int]:
    options = []
    while True:
        regex, i = _translate(pattern, i + 1, nested=True)
        options.append(regex)
        if i >= len(pattern):
            raise SubmissionError(f"invalid glob {pattern!r}: '{{' is never closed")
        if pattern[i] == "}":
            return "(?:" + "|".join(options) + ")", i + 1


def listing_options(url: str, storage_options: dict | None) -> dict:
    """Caller's storage options over the fail-fast listing defaults for ``url``'s protocol."""
    options = dict(storage_options or {})
    if get_protocol(url) in _S3_PROTOCOLS:
        options = _deep_merge(_S3_LISTING_DEFAULTS, options)
    return options


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _deep_merge(merged[key], value)
        merged[key] = value
    return merged


def _list_prefix(prefix: str, storage_options: dict | None) -> Iterator[tuple[tuple, str]]:
    """Yield ``((protocol, path), url)`` for every data file whose path starts with ``prefix``."""
    try:
        fs, path = url_to_fs(prefix, **listing_options(prefix, storage_options))
    except Exception as exc:
        raise SourceError(f"cannot open s3_paths entry {prefix!r}: {exc}") from exc
    if _is_s3(fs):
        fs.retries = _S3_LISTING_RETRIES
    match = path + "/" if prefix.endswith("/") and not path.endswith("/") else path
    try:
        infos = _find(fs, match)
    except FileNotFoundError as exc:
        raise SourceError(_not_found_message(fs, prefix, match, exc)) from exc
    except PermissionError as exc:
        raise SourceError(f"access denied listing {prefix!r}: {exc}; check credentials") from exc
    except Exception as exc:
        raise SourceError(f"cannot list {prefix!r}: {type(exc).__name__}: {exc}") from exc
    names = [name for name in infos if name.startswith(match)]
    directories = _ancestors(names)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    base = prefix if "://" in prefix else match
    for name in names:
        if _is_data_file(name, infos[name], directories):
            yield (protocol, name), base + name[len(match) :]


def _find(fs, match: str) -> dict[str, dict]:
    """Everything under the parent of ``match``; S3 lists only keys starting with it."""
    parent, _, stem = match.rpartition("/")
    if not parent:
        if match.startswith("/"):
            parent = "/"
        else:  # a bare bucket name: every key in it
            parent, stem = match, ""
    if _is_s3(fs):
        return fs.find(parent, prefix=stem, detail=True)
    return fs.find(parent, detail=True)


def _is_s3(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return any(p in _S3_PROTOCOLS for p in protocols)


def _ancestors(names: Iterable[str]) -> set[str]:
    parents = set()
    for name in names:
        parts = name.split("/")
        parents.update("/".join(parts[:n]) for n in range(1, len(parts)))
    return parents


def _is_data_file(name: str, info: dict, directories: set[str]) -> bool:
    """False for directories and directory markers: ``key/`` objects, or zero-size objects
    whose name is also a directory of other keys."""
    if name.endswith("/") or info.get("type") == "directory":
        return False
    return not (info.get("size") == 0 and name in directories)


def _not_found_message(fs, prefix: str, match: str, exc: Exception) -> str:
    if _is_s3(fs):
        bucket = match.split("/", 1)[0]
        return f"bucket {bucket!r} does not exist (s3_paths entry {prefix!r}): {exc}"
    return f"cannot list {prefix!r}: not found: {exc}"
