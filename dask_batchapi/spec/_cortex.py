"""What Cortex has and this framework refuses, each with one line that says what to do instead.

Container-based Batch APIs (Cortex >= 0.36, ``pod:``), model-server handler types
(``handler.type: tensorflow`` / ``onnx``), Inferentia (``compute.inf``), and the other API kinds.
"""

from __future__ import annotations

import logging
from typing import Any

from dask_batchapi.spec._validate import Invalid, integer, show

logger = logging.getLogger(__name__)

OTHER_KINDS = ("RealtimeAPI", "TaskAPI", "AsyncAPI", "TrafficSplitter")
UNSUPPORTED_TYPES = ("tensorflow", "onnx")
POD_REFUSAL = (
    "pod: container-based Batch APIs (Cortex >= 0.36) are not supported; write the container's"
    " batch logic as a Python Handler class and declare it with handler: {type: python, path:"
    " handler.py} instead of pod: (see docs/migrating-from-cortex.md)"
)


def refuse_pod(data: dict) -> None:
    """A Cortex >= 0.36 container spec: refused with what to write instead."""
    if "pod" in data:
        raise Invalid(POD_REFUSAL)


def parse_handler_type(value: Any, where: str) -> str:
    if value in UNSUPPORTED_TYPES:
        raise Invalid(
            f"{where} {value!r} is not supported, use type: python (load the model in the"
            " Handler's __init__; a models: section can move into handler.config)"
        )
    if value != "python":
        raise Invalid(f"{where} must be python, got {show(value)}")
    return value


def parse_inf(value: Any) -> int:
    inf = integer(value, "compute.inf", 0)
    if inf:
        raise Invalid(
            f"compute.inf {inf} is not supported (AWS Inferentia chips); remove compute.inf,"
            " or use compute.gpu for an accelerator"
        )
    return inf


def parse_kind(value: Any) -> str:
    if value in OTHER_KINDS:
        raise Invalid(f"kind {value} is not supported, only kind: BatchAPI")
    if value != "BatchAPI":
        raise Invalid(f"kind must be BatchAPI, got {show(value)}")
    return value
