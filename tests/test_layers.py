"""The package's import graph: no circles (function-level imports included), no upward imports.

Walks every module's ``import`` statements with ``ast``, wherever they are (module level, inside
functions, under ``TYPE_CHECKING``), so an import hidden in a function cannot hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dask_batchapi

PACKAGE = Path(dask_batchapi.__file__).parent

# Bottom to top. A module may import modules of its own layer or of layers below it.
LAYERS = [
    {"errors", "config", "status", "protocol", "fsutil", "logging"},
    {"spec", "sources"},
    {"store"},
    {"worker"},
    {"cluster"},
    {"driver"},
    {"api"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "dask_batchapi":
                    graph[name].add(target)
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    return None


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    cycle = _cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_every_module_has_a_layer():
    for module in import_graph():
        if module.count(".") >= 1 and module != "dask_batchapi.__main__":
            assert _layer(module) is not None, f"{module} is in no layer of LAYERS"


def test_lower_layers_never_import_upper_ones():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if (_layer(module) is not None and _layer(target) is not None)
        and _layer(target) > _layer(module)
    ]
    assert not upward, "upward imports: " + ", ".join(sorted(upward))


def test_the_checker_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


_SPLIT_PENDING: set[str] = set()  # modules allowed past the limit while being split


@pytest.mark.parametrize("limit", [400])
def test_no_module_is_too_long(limit):
    long = {
        name: n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > limit
        and (name := str(p.relative_to(PACKAGE))) not in _SPLIT_PENDING
    }
    assert not long, f"modules over {limit} lines (split by concept): {long}"
