"""Value checks shared by the API spec (:mod:`dask_batchapi.spec.api_spec`) and job submissions (:mod:`dask_batchapi.spec.submission`).

Each check returns the value (normalised where it says so: CPU amounts and byte quantities are
parsed) or raises :class:`Invalid`, a message that names the key path and the offending value but
not yet the file or object; the public parsers add that prefix and re-raise it as ``SpecError`` or
``SubmissionError``. ``parse_cpu`` and ``parse_quantity`` are public through :mod:`dask_batchapi.spec.api_spec`.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from dask_batchapi.errors import SpecError
from dask_batchapi.spec.limits import json_problem

logger = logging.getLogger(__name__)

_QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([KMGTPE]i?|k)?$")
_QUANTITY_SUFFIX = {"k": 1000, **{s: 1000 ** (i + 1) for i, s in enumerate("KMGTPE")}}
_QUANTITY_SUFFIX.update({s + "i": 1024 ** (i + 1) for i, s in enumerate("KMGTPE")})


class Invalid(SpecError):
    """A validation failure whose message does not name the file or object yet."""


def show(value: Any) -> str:
    """``repr(value)``, cut to 80 characters so that a message stays readable."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def one_line(text: str) -> str:
    """Collapse whitespace (newlines included) so that a message fits on one line."""
    return " ".join(str(text).split())


def mapping(value: Any, where: str, *, optional: bool = False) -> dict:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{where} must be a mapping, got {show(value)}")
    return value


def check_keys(data: dict, known: Iterable[str], where: str, label: str = "") -> None:
    """Reject keys not in ``known``; ``label`` prefixes key names (``handler.``)."""
    known = list(known)
    head = f"{where}: " if where else ""
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f", did you mean '{label}{close[0]}'?" if close else ""
            raise Invalid(f"{head}unknown key '{label}{key}'{hint}")


def integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise Invalid(f"{where} must be an integer >= {minimum}, got {show(value)}")
    return value


def positive_number(value: Any, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise Invalid(f"{where} must be a number > 0, got {show(value)}")
    return float(value)


def string(value: Any, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise Invalid(f"{where} must be a non-empty string, got {show(value)}")
    return value


def str_list(value: Any, where: str, *, non_empty: bool = False) -> tuple[str, ...]:
    if value is None and not non_empty:
        return ()
    if not isinstance(value, list) or (non_empty and not value):
        need = "a non-empty list" if non_empty else "a list"
        raise Invalid(f"{where} must be {need} of strings, got {show(value)}")
    for i, item in enumerate(value):
        string(item, f"{where}[{i}]")
    return tuple(value)


def json_mapping(value: Any, where: str) -> dict:
    value = mapping(value, where, optional=True)
    try:  # (json_problem: no recursion, so deep nesting is a clear error too)
        ok = json_problem(value, where) is None and json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise Invalid(f"{where} must hold only JSON values (string keys), got {show(value)}")
    return value


def parse_cpu(value: Any, where: str) -> float:
    """Parse a CPU amount in cores: ``1``, ``0.5``, ``"2"`` or millicores like ``"200m"``.

    >>> parse_cpu("200m", "compute.cpu")
    0.2
    """
    text = str(value).strip() if isinstance(value, (str, int, float)) else ""
    scale = 1000 if text.endswith("m") else 1
    try:
        cores = float(Decimal(text.removesuffix("m") if scale > 1 else text) / scale)
    except (InvalidOperation, ValueError):
        cores = -1.0
    if isinstance(value, bool) or not math.isfinite(cores) or cores <= 0:
        raise Invalid(f"{where} must be a CPU amount > 0 like 1, 0.5 or 200m, got {show(value)}")
    return cores


def parse_quantity(value: Any, where: str) -> int:
    """Parse a byte quantity: an integer or ``"1Gi"``, ``"200Mi"``, ``"1G"``, ``"500M"``.

    K, M, G, T are powers of 1000; Ki, Mi, Gi, Ti powers of 1024.

    >>> parse_quantity("1Gi", "compute.mem")
    1073741824
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf:
        return int(value)
    match = _QUANTITY_RE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise Invalid(f"{where} must be a quantity like 1Gi, 512Mi or 1G, got {show(value)}")
    return int(Decimal(match.group(1)) * _QUANTITY_SUFFIX.get(match.group(2) or "", 1))
