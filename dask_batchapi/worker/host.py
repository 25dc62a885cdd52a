"""The handler host: a job's project on one worker, and its Handler instance.

It builds the Handler once (lazily, on a worker thread: a slow ``__init__`` such as loading a
model must not block the worker's event loop) with the project directory as working directory,
``.env`` plus ``handler.env`` exported, the job's dependencies installed, and the handler
imported under a job-unique module name. :meth:`HandlerHost.running` is the context every piece
of handler code runs in. :meth:`HandlerHost.cleanup` takes it all away again: the modules the
project imported, ``sys.path`` entries, environment changes, processes the handler left behind.

Handler code runs under one process-wide lock: the working directory is process-wide, and
``handle_batch`` must never run concurrently on one instance. Run workers with one thread (the
embedded cluster does) to use every core.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dask_batchapi.logging import log_context
from dask_batchapi.protocol import JobContext
from dask_batchapi.spec.project import read_env_file
from dask_batchapi.worker.capture import capture_output
from dask_batchapi.worker.deps import Installed, install_dependencies
from dask_batchapi.worker.metrics import MetricsClient
from dask_batchapi.worker.processes import JobProcesses
from dask_batchapi.worker.scope import HandlerScope, entered, scope_from

logger = logging.getLogger(__name__)

HANDLER_LOCK = threading.RLock()  # see the module docstring


class HandlerHost:
    """One job's project directory and Handler on this worker process."""

    def __init__(self, context: JobContext, project_dir: Path):
        self.context, self.dir = context, project_dir
        self.metrics = MetricsClient.from_config()
        self.processes = JobProcesses()  # the children its handler started: ended at cleanup
        self._deps = Installed()
        self._scope: HandlerScope | None = None
        self._saved_env: dict[str, str | None] = {}
        self._sys_path: list[str] = []
        self._modules: list[str] = []

    # -- building the Handler -----------------------------------------------------------------
    def build(self) -> Any:
        """Install the dependencies, import the handler, and build ``Handler(...)``."""
        ctx, sig = self.context, self.context.signature
        self._export_env({**read_env_file(self.dir), **ctx.env})
        with self.running():
            self._use_dependencies(install_dependencies(self.dir, ctx.dependencies))
            module = self._import_handler()
            cls = getattr(module, sig["class_name"])
            kwargs = {
                "config": ctx.config,
                "job_spec": ctx.job_spec,
                "metrics_client": self.metrics,
            }
            return cls(**{name: kwargs[name] for name in sig["init_args"]})

    def _use_dependencies(self, installed: Installed) -> None:
        """Installed dependencies: on sys.path (see _import_handler) and, for the processes
        the handler starts, on PATH and PYTHONPATH; all restored at cleanup."""
        self._deps = installed
        for name, entries in (("PATH", installed.bin_dirs), ("PYTHONPATH", installed.paths)):
            if entries:
                old = os.environ.get(name)
                self._export_env({name: os.pathsep.join([*entries, *([old] if old else [])])})

    def _export_env(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = "" if value is None else str(value)

    def _import_handler(self):
        """Import the handler under a job-unique module name.

        Modules that other jobs' projects imported on this worker (a sibling ``utils.py`` of
        the same name, say) are set aside during the import, so this project gets its own;
        afterwards they are put back and this project's modules live only in its handler's
        references (and in ``sys.modules`` when no other job is there).
        """
        ctx = self.context
        paths = [str(self.dir / ctx.python_path)] if ctx.python_path else []
        for entry in [*self._deps.paths, *paths, str(self.dir)]:
            while entry in sys.path:
                sys.path.remove(entry)
            sys.path.insert(0, entry)
            self._sys_path.append(entry)
        others = {n: m for n, m in list(sys.modules.items()) if self._other_project(m)}
        for name in others:
            del sys.modules[name]
        name = f"batchapi_handler_{ctx.job_id}"
        try:
            spec = importlib.util.spec_from_file_location(name, self.dir / ctx.handler_path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        finally:
            self._modules = [n for n, m in list(sys.modules.items()) if self._own(m)]
            sys.modules.update(others)
        self._modules.append(name)
        return module

    def _own(self, module: Any) -> bool:
        path = getattr(module, "__file__", None) or ""
        return path.startswith(tuple(p + os.sep for p in [str(self.dir), *self._deps.paths]))

    def _other_project(self, module: Any) -> bool:
        path = getattr(module, "__file__", None) or ""
        roots = [str(self.dir.parent), *([self._deps.root] if self._deps.root else [])]
        return path.startswith(tuple(r + os.sep for r in roots)) and not self._own(module)

    # -- running handler code -----------------------------------------------------------------
    @contextmanager
    def running(self, **log_fields: str):
        """Run handler code: the handler lock, the job's log context and scope, the project
        directory as cwd, print() captured into the job's logs, its child processes noted."""
        ctx = self.context
        with (
            HANDLER_LOCK,
            log_context(
                api_name=ctx.api_name, job_id=ctx.job_id, log_level=ctx.log_level, **log_fields
            ),
            entered(self._handler_scope()),
        ):
            old = os.getcwd()
            os.chdir(self.dir)
            try:
                with capture_output(), self.processes.watching():
                    yield
            finally:
                os.chdir(old)

    def _handler_scope(self) -> HandlerScope | None:
        if self._scope is None:
            ctx = self.context
            self._scope = scope_from(ctx.origin, ctx.api_name, ctx.job_id)
        return self._scope

    def triggered(self) -> list[dict]:
        """Jobs that handler code submitted since the last call (for the driver)."""
        return self._scope.drain() if self._scope is not None else []

    # -- cleanup ------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Take the project's modules, sys.path entries, environment and processes away."""
        with HANDLER_LOCK:
            late = [n for n, m in list(sys.modules.items()) if self._own(m)]  # lazy imports
            for name in [*self._modules, *late]:
                sys.modules.pop(name, None)
            for entry in self._sys_path:
                while entry in sys.path:
                    sys.path.remove(entry)
            for key, old in self._saved_env.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
        self.processes.end()
