"""Limits on what users hand us, so that hostile input is one clear error, never a crash.

- YAML: aliases may not expand a document past :data:`MAX_NODES` nodes ("billion laughs"), and
  no document may nest deeper than :data:`MAX_DEPTH` (checked on the composed node graph,
  before anything is built).
- JSON values (submission items, handler outputs): strict JSON only. Sets, bytes, tuples of
  objects, NaN and Infinity, non-string keys and integers of more than 4,300 digits (Python's
  own limit for int <-> str) are refused with the value's place and type, never converted.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from dask_batchapi.errors import LimitError, SpecError

MAX_DEPTH = 100  # nesting levels of a YAML document or a JSON value
MAX_NODES = 1_000_000  # nodes of a YAML document once its aliases are expanded
_MAX_INT_BITS = int(4300 * math.log2(10))  # sys.get_int_max_str_digits' default, in bits


def check_yaml_node(root: yaml.Node | None, source: str) -> None:
    """LimitError if ``root`` nests deeper than MAX_DEPTH or expands past MAX_NODES nodes."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: met again means a recursive alias
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if id(node) in sizes and not done:
            continue  # an alias of a node already measured: its size is known
        if id(node) in open_nodes and not done:
            raise LimitError(f"{source}: an alias refers to itself (a recursive document)")
        children = _children(node)
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in children)
            if sizes[id(node)] > MAX_NODES:
                raise LimitError(
                    f"{source}: its aliases expand to more than {MAX_NODES} values; refused"
                )
            continue
        if depth > MAX_DEPTH:
            raise LimitError(f"{source}: nested deeper than {MAX_DEPTH} levels; refused")
        open_nodes.add(id(node))
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def load_limited(text: str, source: str, loader: type[yaml.SafeLoader]) -> Any:
    """``yaml.load`` with ``loader``, refusing documents over the limits before they are built
    (LimitError), and values Python cannot build (SpecError) in one line."""
    instance = loader(text)
    try:
        node = instance.get_single_node()
        check_yaml_node(node, source)
        return None if node is None else instance.construct_document(node)
    except RecursionError:
        raise LimitError(f"{source}: nested too deep; refused") from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise SpecError(f"{source}: invalid value: {short_reason(error)}") from None
    finally:
        instance.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def json_problem(value: Any, where: str) -> str | None:
    """Why ``value`` is not strict JSON (naming the place, e.g. ``items[3].a``), or None.

    The place is built only when there is something to report, so memory stays O(depth) and
    time O(values) for an item list of any size.

    >>> json_problem({"a": [1, float("nan")]}, "items[0]")
    'items[0].a[1] is nan, which strict JSON cannot hold'
    """
    found = _problem(value, 0)
    if found is None:
        return None
    parts, message = found
    return f"{where}{''.join(reversed(parts))} {message}"


def _problem(v: Any, depth: int) -> tuple[list[str], str] | None:
    """``(path parts, innermost first; message)`` of the first problem in ``v``, or None."""
    kind = type(v)
    if v is None or kind is str or kind is bool:
        return None
    if kind is int or isinstance(v, int):
        return (
            ([], "is an integer of more than 4300 digits")
            if v.bit_length() > _MAX_INT_BITS
            else None
        )
    if isinstance(v, float):
        return None if math.isfinite(v) else ([], f"is {v!r}, which strict JSON cannot hold")
    if isinstance(v, str):
        return None
    if not isinstance(v, list | tuple | dict):
        return [], f"is a {type(v).__name__}, which JSON cannot hold"
    if depth >= MAX_DEPTH:
        return [], f"is nested deeper than {MAX_DEPTH} levels"
    if isinstance(v, dict):
        for key, x in v.items():
            if not isinstance(key, str):
                return [], f"has the key {key!r} ({type(key).__name__}); JSON keys are strings"
            found = _problem(x, depth + 1)
            if found is not None:
                found[0].append(f".{key}")
                return found
        return None
    for i, x in enumerate(v):
        if x is None or type(x) is str or (type(x) is int and x.bit_length() <= _MAX_INT_BITS):
            continue  # the common items, without a call
        found = _problem(x, depth + 1)
        if found is not None:
            found[0].append(f"[{i}]")
            return found
    return None


def check_depth(value: Any, where: str) -> None:
    """LimitError if ``value`` (parsed JSON) nests deeper than MAX_DEPTH."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise LimitError(f"{where}: nested deeper than {MAX_DEPTH} levels; refused")
        if isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())


def short_reason(error: Exception) -> str:
    """The first clause of an error's message (Python's int-digits error adds a how-to)."""
    return str(error).split(";")[0]
