"""Import a project's handler file and report its Handler class's signatures.

:func:`dask_batchapi.project.check_handler` runs this file in a subprocess, so that the
handler's import-time side effects and crashes stay out of the caller. It uses the standard
library only (the child must not pay for importing dask). The request comes as JSON on stdin;
the result is written as JSON to the file the request names, never to stdout, which the handler
may print to freely.

A project with dependency files (``requirements.txt``...) imports packages that only its workers
install. When the import stops at a missing module, and the request says the project has such
files, the signatures are read from the source instead (``ast``), as written in the class.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import logging
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

INIT_ARGS = ("config", "job_spec", "metrics_client")
BATCH_ARGS = ("payload", "batch_id")
COMPLETE_METHODS = ("on_job_complete", "handle_on_job_complete")
MODULE_NAME = "_batchapi_handler"


class HandlerProblem(Exception):
    """The handler file or its class is not usable; the message is one line."""


class _MissingModule(HandlerProblem):
    """The handler imports a module this machine lacks (the workers may install it)."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def signature_args(func: Callable, allowed: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Return the names in ``allowed`` that ``func`` declares, in declaration order.

    ``self`` is left out; ``**kwargs`` accepts every allowed name; any other name raises
    :class:`HandlerProblem`.

    >>> signature_args(lambda payload, **kw: None, BATCH_ARGS, "f")
    ('payload', 'batch_id')
    """
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as error:
        raise HandlerProblem(_one_line(f"{where}: cannot read its signature: {error}")) from None
    if params and params[0].name == "self" and not inspect.ismethod(func):
        params = params[1:]
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for param in named:
        if param.name not in allowed:
            choices = ", ".join(allowed) or "none"
            raise HandlerProblem(f"{where}: unknown argument '{param.name}' (allowed: {choices})")
        if param.kind is param.POSITIONAL_ONLY:
            raise HandlerProblem(f"{where}: argument '{param.name}' must not be positional-only")
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return tuple(allowed)
    return tuple(p.name for p in named)


def _method(cls: type, name: str) -> Callable | None:
    """Return ``cls.name`` as an instance would see it (bound, so without ``self``)."""
    raw = inspect.getattr_static(cls, name, None)
    if raw is None:
        return None
    func = getattr(cls, name)
    if inspect.isfunction(func) and not isinstance(raw, staticmethod):
        return types.MethodType(func, object())
    return func if callable(func) else None


def _import_handler(path: Path, shown: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        if error.filename and Path(error.filename).resolve() == path.resolve():
            kind = type(error).__name__
            raise HandlerProblem(
                _one_line(f"{shown}:{error.lineno}: {kind}: {error.msg}")
            ) from None
        raise HandlerProblem(_one_line(f"{shown}: import failed: SyntaxError: {error}")) from None
    except BaseException as error:  # noqa: B036 - SystemExit at import is a failure to report too
        message = _one_line(f"{shown}: import failed: {type(error).__name__}: {error}")
        problem = _MissingModule if isinstance(error, ModuleNotFoundError) else HandlerProblem
        raise problem(message) from None
    return module


def _init_args(cls: type, class_name: str) -> tuple[str, ...]:
    if cls.__init__ is object.__init__:
        return ()
    return signature_args(_method(cls, "__init__"), INIT_ARGS, f"{class_name}.__init__")


def check(request: dict[str, Any]) -> dict[str, Any]:
    """Import the handler named in ``request`` and return its signature as a dict."""
    shown, legacy = request["handler_path"], request["legacy"]
    sys.path[:0] = request["sys_path"]
    sys.path.append(request["package_root"])  # for cortex_internal / dask_batchapi imports
    path = Path(request["project_dir"]) / shown
    try:
        module = _import_handler(path, shown)
    except _MissingModule as missing:
        if not request.get("has_dependencies"):
            raise
        return {**static_check(path, shown, legacy, missing), "static": str(missing)}
    class_name = "PythonPredictor" if legacy else "Handler"
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise HandlerProblem(f"{shown} has no class named {class_name}")
    batch_method = "predict" if legacy else "handle_batch"
    batch = _method(cls, batch_method)
    if batch is None:
        raise HandlerProblem(f"{shown}: class {class_name} has no method {batch_method}")
    complete = next((n for n in COMPLETE_METHODS if _method(cls, n) is not None), None)
    if complete is not None:
        signature_args(_method(cls, complete), (), f"{class_name}.{complete}")
    return {
        "class_name": class_name,
        "init_args": _init_args(cls, class_name),
        "batch_method": batch_method,
        "batch_args": signature_args(batch, BATCH_ARGS, f"{class_name}.{batch_method}"),
        "complete_method": complete,
    }


def _ast_args(func: ast.FunctionDef, allowed: tuple[str, ...], where: str) -> tuple[str, ...]:
    """:func:`signature_args` for a method as written in the source."""
    a = func.args
    static = any(getattr(d, "id", None) == "staticmethod" for d in func.decorator_list)
    named = [(p.arg, True) for p in a.posonlyargs] + [(p.arg, False) for p in a.args]
    named = named[0 if static else 1 :] + [(p.arg, False) for p in a.kwonlyargs]
    for name, positional_only in named:
        if name not in allowed:
            choices = ", ".join(allowed) or "none"
            raise HandlerProblem(f"{where}: unknown argument '{name}' (allowed: {choices})")
        if positional_only:
            raise HandlerProblem(f"{where}: argument '{name}' must not be positional-only")
    return tuple(allowed) if a.kwarg else tuple(name for name, _ in named)


def static_check(path: Path, shown: str, legacy: bool, missing: HandlerProblem) -> dict:
    """The handler's signature read from its source; ``missing`` is raised when the source
    does not say (the class or the method is not written in the file itself)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    class_name = "PythonPredictor" if legacy else "Handler"
    node = next(
        (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None
    )
    if node is None:
        raise missing
    methods = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
    batch_method = "predict" if legacy else "handle_batch"
    if batch_method not in methods:
        raise missing
    complete = next((n for n in COMPLETE_METHODS if n in methods), None)
    if complete is not None:
        _ast_args(methods[complete], (), f"{class_name}.{complete}")
    init = methods.get("__init__")
    return {
        "class_name": class_name,
        "init_args": _ast_args(init, INIT_ARGS, f"{class_name}.__init__") if init else (),
        "batch_method": batch_method,
        "batch_args": _ast_args(methods[batch_method], BATCH_ARGS, f"{class_name}.{batch_method}"),
        "complete_method": complete,
    }


def main() -> None:
    """Read the request from stdin, check the handler, write the result file, and exit."""
    request = json.loads(sys.stdin.read())
    try:
        result = {"ok": True, "signature": check(request)}
    except HandlerProblem as error:
        result = {"ok": False, "error": str(error)}
    Path(request["result_path"]).write_text(json.dumps(result), encoding="utf-8")
    # os._exit: threads or atexit hooks the handler started must not keep the check alive.
    os._exit(0)


if __name__ == "__main__":
    main()
