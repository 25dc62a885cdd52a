"""YAML for spec files: PyYAML's safe loader, but a repeated key is an error, not the last one wins."""

from __future__ import annotations

import logging
from typing import Any

import yaml

from dask_batchapi.errors import SpecError
from dask_batchapi.spec._validate import one_line, show
from dask_batchapi.spec.limits import load_limited

logger = logging.getLogger(__name__)

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(yaml.YAMLError):
    """A mapping repeats a key; the message names the key and the line of the repeat."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {show(key)} at line {line}")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a repeated key (PyYAML silently keeps the last one)."""

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        # Checked when composed, not constructed: by construction time PyYAML's merge-key
        # flattening may have copied ``<<: *base`` keys into the node, and overriding them is fine.
        node = super().compose_mapping_node(anchor)
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # a non-scalar key is unhashable; the constructor reports it
            key = self.construct_object(key_node)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return node


def load_yaml(text: str, source: str) -> Any:
    try:
        # safe: _StrictLoader is a SafeLoader; within the limits of spec.limits
        return load_limited(text, source, _StrictLoader)
    except _DuplicateKey as error:
        raise SpecError(f"{source}: {error}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f" at line {mark.line + 1}" if mark else ""
        problem = error.problem or error.context or "malformed"
        raise SpecError(one_line(f"{source}: invalid YAML{line}: {problem}")) from None
    except yaml.YAMLError as error:
        raise SpecError(one_line(f"{source}: invalid YAML: {error}")) from None
