"""Worker side: the per-job WorkerPlugin that owns the project and the Handler instance.

The driver registers one :class:`JobPlugin` per job (named ``batchapi-<job_id>``). On each
worker, ``setup`` unpacks the project archive into the worker's local directory. The Handler is
built lazily by the first task, on a worker thread (a slow ``__init__`` such as loading a model
must not block the worker's event loop), with the project directory as working directory and
``.env`` plus ``handler.env`` exported. ``teardown`` (when the driver unregisters the plugin)
removes the project files, the imported modules, ``sys.path`` entries and environment changes.

Handler code runs under one process-wide lock: the working directory is process-wide, and
``handle_batch`` must never run concurrently on one instance. Run workers
with one thread (the embedded cluster does) to use every core.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import pickle
import shutil
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from dask_batchapi.logging import install_collector, log_context
from dask_batchapi.sources.batches import load_payloads
from dask_batchapi.sources.delimited import PARSED
from dask_batchapi.spec.project import read_env_file, unpack_project
from dask_batchapi.worker.capture import capture_output
from dask_batchapi.worker.outputs import OutputWriter

logger = logging.getLogger(__name__)

_HANDLER_LOCK = threading.RLock()  # see the module docstring
TIMEOUT_EVENT = "batchapi-batch-timeout"  # worker event: a stuck batch's worker is restarted


class BatchTimeout(Exception):
    """Raised inside a batch that ran longer than the job's ``batch_timeout``."""


def plugin_name(job_id: str) -> str:
    return f"batchapi-{job_id}"


def batch_id_for(job_id: str, index: int) -> str:
    """The unique, stable id of batch ``index`` of a job."""
    return f"{job_id}-{index:06d}"


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def error_info(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message, formatted traceback) of an exception, picklable and JSON-able.

    The traceback starts at the first frame of the user's code: the package's own frames
    above it (the chunk loop, the project context) say nothing about the failure. An error
    raised in the package itself (reading a payload) keeps all its frames."""
    tb = first = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb if tb is not None else first))
    return type(exc).__name__, str(exc), text


@dataclass
class JobContext:
    """What a worker needs to know about its job (shipped inside the plugin)."""

    job_id: str
    api_name: str
    handler_path: str
    python_path: str | None
    signature: dict  # project.HandlerSignature.to_dict()
    config: dict  # spec config deep-merged with the job's config
    job_spec: dict
    env: dict = field(default_factory=dict)  # handler.env from the spec
    log_level: str = "info"
    output: str | None = None
    storage_options: dict = field(default_factory=dict)
    batch_timeout: float | None = None
    batch_timeout_grace: float = 5.0


class JobPlugin(WorkerPlugin):
    """Unpacks a job's project on every worker and owns that worker's Handler instance."""

    idempotent = False

    def __init__(self, context: JobContext, archive: bytes):
        self.context = context
        self.archive = archive
        self.name = plugin_name(context.job_id)
        self._reset()

    def _reset(self) -> None:
        self.handler: Any = None
        self.init_error: tuple[str, str, str] | None = None
        self.cancelled = False
        self.batches_run = 0
        self._build_lock = threading.Lock()
        self._saved_env: dict[str, str | None] = {}
        self._sys_path: list[str] = []
        self._modules: list[str] = []
        self._writer: OutputWriter | None = None
        self.dir: Path | None = None
        self._current: tuple[int, float, int] | None = None  # batch index, start, thread id
        self._current_lock = threading.Lock()
        self._watchdog: BatchWatchdog | None = None
        self._bound: tuple | None = None
        self.cleaned = threading.Event()  # set once teardown's cleanup has ended (leases wait)

    def __getstate__(self) -> dict:
        return {"context": self.context, "archive": self.archive, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- lifecycle ----------------------------------------------------------------------------
    def setup(self, worker) -> None:
        root = Path(worker.local_directory) / "batchapi"
        self.dir = unpack_project(self.archive, root / self.context.job_id)
        self.worker_address = worker.address
        install_collector()
        if self.context.batch_timeout:
            self._watchdog = BatchWatchdog(self, worker)
            self._watchdog.start()

    def teardown(self, worker) -> None:
        """Remove everything of the job from this worker (runs on the worker's event loop).

        A batch still running (of this job or another) keeps the handler lock; waiting for it
        here would freeze the worker, so a thread of its own does the cleanup then.
        """
        self.cancelled = True
        if self._watchdog is not None:
            self._watchdog.stop()
        if _HANDLER_LOCK.acquire(blocking=False):
            try:
                self._cleanup()
            finally:
                _HANDLER_LOCK.release()
        else:
            name = f"batchapi-cleanup-{self.context.job_id}"
            threading.Thread(target=self._cleanup, name=name, daemon=True).start()

    def _cleanup(self) -> None:
        try:
            self._clean()
        finally:
            self.cleaned.set()

    def _clean(self) -> None:
        with _HANDLER_LOCK:
            self.handler = None
            for name in self._modules:
                sys.modules.pop(name, None)
            for entry in self._sys_path:
                while entry in sys.path:
                    sys.path.remove(entry)
            for key, old in self._saved_env.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
        install_collector().discard(self.context.job_id)
        PARSED.drop(self.context.job_id)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- handler ------------------------------------------------------------------------------
    def _ensure_handler(self) -> Any:
        with self._build_lock:
            if self.handler is None and self.init_error is None:
                try:
                    self.handler = self._build_handler()
                except BaseException as exc:  # noqa: BLE001 - any init failure is the job's error
                    self.init_error = error_info(exc)
        return self.handler

    def _build_handler(self) -> Any:
        ctx, sig = self.context, self.context.signature
        self._export_env({**read_env_file(self.dir), **ctx.env})
        with self._in_project():
            module = self._import_handler()
            cls = getattr(module, sig["class_name"])
            kwargs = {"config": ctx.config, "job_spec": ctx.job_spec}
            return cls(**{name: kwargs[name] for name in sig["init_args"]})

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
        for entry in [*paths, str(self.dir)]:
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
        return path.startswith(str(self.dir) + os.sep)

    def _other_project(self, module: Any) -> bool:
        path = getattr(module, "__file__", None) or ""
        return path.startswith(str(self.dir.parent) + os.sep) and not self._own(module)

    @contextmanager
    def _in_project(self, **log_fields: str):
        """Run handler code: project dir as cwd, stdout captured into the job's logs."""
        ctx = self.context
        with (
            _HANDLER_LOCK,
            log_context(
                api_name=ctx.api_name, job_id=ctx.job_id, log_level=ctx.log_level, **log_fields
            ),
        ):
            old = os.getcwd()
            os.chdir(self.dir)
            try:
                with capture_output():
                    yield
            finally:
                os.chdir(old)

    # -- batches ------------------------------------------------------------------------------
    def run_chunk(self, refs: list) -> dict:
        """Run a chunk of batches; every batch gets its own outcome."""
        result: dict[str, Any] = {"worker": self.worker_address, "pid": os.getpid()}
        if self.cancelled:
            return {**result, "not_run": [r.index for r in refs], "outcomes": []}
        self._ensure_handler()
        if self.init_error is not None:
            return {**result, "init_error": self.init_error, "outcomes": []}
        payloads = load_payloads(refs, self.context.storage_options, self.context.job_id)
        outcomes, not_run = [], []
        with self._in_project():  # once per chunk: cwd, output capture, the handler lock
            for ref, payload in zip(refs, payloads, strict=True):
                if self.cancelled:
                    not_run.append(ref.index)
                    continue
                try:
                    outcomes.append(self._run_one(ref.index, payload))
                except BatchTimeout as exc:  # raised just after the batch ended: still counts
                    outcomes.append((ref.index, False, 0.0, error_info(exc)))
        logs = install_collector().drain(self.context.job_id)
        return {**result, "outcomes": outcomes, "not_run": not_run, "logs": logs}

    def _run_one(self, index: int, payload: Any) -> tuple:
        """(index, ok, seconds, error info or None) of one batch."""
        start = time.perf_counter()
        batch_id = batch_id_for(self.context.job_id, index)
        try:
            if isinstance(payload, BaseException):
                raise payload
            with log_context(batch_id=batch_id):
                if self._watchdog is None:
                    value = self._call_batch(payload, batch_id)
                else:
                    with self._watched(index):
                        value = self._call_batch(payload, batch_id)
            if value is not None and self.context.output:
                self._output_writer().commit(index, value)
        except BatchTimeout:
            limit = self.context.batch_timeout
            exc = BatchTimeout(f"batch ran longer than its batch_timeout of {limit} s")
            return index, False, time.perf_counter() - start, error_info(exc)
        except Exception as exc:  # noqa: BLE001 - a handler failure fails only its batch
            return index, False, time.perf_counter() - start, error_info(exc)
        self.batches_run += 1
        return index, True, time.perf_counter() - start, None

    @contextmanager
    def _watched(self, index: int):
        """Let the watchdog see which batch this thread runs, and since when."""
        with self._current_lock:
            self._current = (index, time.monotonic(), threading.get_ident())
        try:
            yield
        finally:
            with self._current_lock:
                self._current = None

    def _call_batch(self, payload: Any, batch_id: str) -> Any:
        method, names = self._batch_call
        args = {"payload": payload, "batch_id": batch_id}
        return method(**{name: args[name] for name in names})

    @property
    def _batch_call(self) -> tuple:
        if self._bound is None:
            sig = self.context.signature
            self._bound = (getattr(self.handler, sig["batch_method"]), tuple(sig["batch_args"]))
        return self._bound

    def _output_writer(self) -> OutputWriter:
        if self._writer is None:
            ctx = self.context
            self._writer = OutputWriter(ctx.output, ctx.job_id, ctx.storage_options)
        return self._writer

    def run_complete(self) -> dict:
        """Call on_job_complete once; prefers this worker's existing Handler instance."""
        result: dict[str, Any] = {"worker": self.worker_address, "error": None, "ran": False}
        method = self.context.signature.get("complete_method")
        handler = self._ensure_handler()
        if self.init_error is not None:
            result["error"] = self.init_error
        elif method:
            try:
                with self._in_project():
                    getattr(handler, method)()
                result["ran"] = True
            except Exception as exc:  # noqa: BLE001
                result["error"] = error_info(exc)
        result["logs"] = install_collector().drain(self.context.job_id)
        return result


class BatchWatchdog(threading.Thread):
    """Enforces ``batch_timeout`` on one worker.

    A batch over its time gets :class:`BatchTimeout` raised inside it (asynchronously, so pure
    Python code stops at once; it counts as a failed attempt). A batch stuck in C code that
    ignores it for ``batch_timeout_grace`` seconds more has its worker process restarted by the
    nanny, after an event tells the driver which batch it was.
    """

    def __init__(self, plugin: JobPlugin, worker):
        super().__init__(name=f"batchapi-watchdog-{plugin.context.job_id}", daemon=True)
        self.plugin, self.worker = plugin, worker
        self.timeout = float(plugin.context.batch_timeout)
        self.grace = float(plugin.context.batch_timeout_grace)
        self._stop_event = threading.Event()
        self._signalled: tuple[int, float] | None = None  # (batch index, when)

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        step = min(0.1, self.timeout / 10)
        while not self._stop_event.wait(step):
            self._check(time.monotonic())

    def _check(self, now: float) -> None:
        plugin = self.plugin
        with plugin._current_lock:
            current = plugin._current
            if current is None:
                return
            index, started, thread_id = current
            if now - started < self.timeout:
                return
            if self._signalled is None or self._signalled[0] != index:
                self._signalled = (index, now)
                exc = ctypes.py_object(BatchTimeout)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)
                return
        if now - self._signalled[1] > self.grace and self.worker.nanny:
            self._restart_worker(index)

    def _restart_worker(self, index: int) -> None:
        ctx = self.plugin.context
        logger.error(
            "batch %s of job %s is stuck past its timeout; restarting this worker",
            index,
            ctx.job_id,
        )
        event = {"job_id": ctx.job_id, "index": index}
        self.worker.loop.add_callback(self.worker.log_event, TIMEOUT_EVENT, event)
        time.sleep(0.5)  # let the event reach the scheduler
        os._exit(1)


def _plugin(name: str) -> JobPlugin:
    try:
        return get_worker().plugins[name]
    except KeyError:
        raise RuntimeError(f"job plugin {name} is not registered on this worker") from None


def run_chunk_task(name: str, packed: bytes) -> dict:
    """Dask task: run a chunk of batches on this worker's Handler.

    The chunk arrives pickled (:func:`pack_chunk`): the scheduler then handles one bytes
    object, never the items, and a message it keeps in its log is compact."""
    plugin = get_worker().plugins.get(name)
    refs = pickle.loads(packed)  # noqa: S301 - our driver pickled it
    if plugin is None:  # a worker not leased to the job (its own died): nothing of it runs here
        return {
            "pid": os.getpid(),
            "foreign": True,
            "outcomes": [],
            "not_run": [r.index for r in refs],
        }
    return plugin.run_chunk(refs)


def pack_chunk(refs: list) -> bytes:
    """A chunk of batch references as the one bytes argument of :func:`run_chunk_task`."""
    return pickle.dumps(refs, protocol=pickle.HIGHEST_PROTOCOL)


def run_complete_task(name: str) -> dict:
    """Dask task: run on_job_complete on this worker's Handler."""
    return _plugin(name).run_complete()


def cancel_job(name: str, dask_worker=None) -> None:
    """``client.run`` target: no further batch of the job starts on this worker."""
    plugin = (dask_worker or get_worker()).plugins.get(name)
    if plugin is not None:
        plugin.cancelled = True
