"""Worker side: the per-job WorkerPlugin, and the tasks that run a job's chunks on it.

The driver registers one :class:`JobPlugin` per job (named ``batchapi-<job_id>``). On each
worker, ``setup`` unpacks the project archive into the worker's local directory and opens its
:class:`~dask_batchapi.worker.host.HandlerHost`; the first task builds the Handler (on a worker
thread). Chunks of batches run through :func:`run_chunk_task` and answer a
:class:`~dask_batchapi.protocol.ChunkResult`; ``on_job_complete`` runs through
:func:`run_complete_task`. ``teardown`` (when the driver unregisters the plugin) removes the
project files, the imported modules, ``sys.path`` entries, environment changes and the processes
the handler left running.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from dask_batchapi.errors import DependencyError
from dask_batchapi.logging import install_collector, log_context
from dask_batchapi.protocol import (
    INIT_EVENT,
    BatchError,
    BatchOutcome,
    ChunkResult,
    CompletionResult,
    JobContext,
    batch_id_for,
    plugin_name,
    unpack_chunk,
)
from dask_batchapi.sources.batches import load_payloads
from dask_batchapi.sources.delimited import PARSED
from dask_batchapi.spec.failures import item_id
from dask_batchapi.spec.unpack import unpack_limits, unpack_project
from dask_batchapi.worker.host import HANDLER_LOCK, HandlerHost
from dask_batchapi.worker.outputs import OutputWriter
from dask_batchapi.worker.watchdog import BatchTimeout, BatchWatchdog

logger = logging.getLogger(__name__)


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
        self.host: HandlerHost | None = None
        self.init_error: BatchError | None = None
        self.cancelled = False
        self.batches_run = 0
        self.dir: Path | None = None
        self._build_lock = threading.Lock()
        self._writer: OutputWriter | None = None
        self._watchdog: BatchWatchdog | None = None
        self._bound: tuple | None = None
        self._worker: Any = None
        self.cleaned = threading.Event()  # set once teardown's cleanup has ended (leases wait)

    def __getstate__(self) -> dict:
        return {"context": self.context, "archive": self.archive, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- lifecycle ----------------------------------------------------------------------------
    def setup(self, worker) -> None:
        ctx = self.context
        root = Path(worker.local_directory) / "batchapi"
        self.dir = unpack_project(self.archive, root / ctx.job_id, *unpack_limits())
        self.host = HandlerHost(ctx, self.dir)
        self.worker_address = worker.address
        self._worker = worker
        install_collector()
        if ctx.batch_timeout:
            self._watchdog = BatchWatchdog(
                ctx.job_id, worker, ctx.batch_timeout, ctx.batch_timeout_grace
            )
            self._watchdog.start()

    def teardown(self, worker) -> None:
        """Remove everything of the job from this worker (runs on the worker's event loop).

        A batch still running (of this job or another) keeps the handler lock; waiting for it
        here would freeze the worker, so a thread of its own does the cleanup then.
        """
        self.cancelled = True
        if self._watchdog is not None:
            self._watchdog.stop()
        if HANDLER_LOCK.acquire(blocking=False):
            try:
                self._cleanup()
            finally:
                HANDLER_LOCK.release()
        else:
            name = f"batchapi-cleanup-{self.context.job_id}"
            threading.Thread(target=self._cleanup, name=name, daemon=True).start()

    def _cleanup(self) -> None:
        try:
            self._clean()
        finally:
            self.cleaned.set()

    def _clean(self) -> None:
        self.handler = None
        if self.host is not None:
            self.host.cleanup()
        install_collector().discard(self.context.job_id)
        PARSED.drop(self.context.job_id)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- handler ------------------------------------------------------------------------------
    def _ensure_handler(self) -> Any:
        with self._build_lock:
            if self.handler is None and self.init_error is None:
                try:
                    self.handler = self.host.build()
                except DependencyError as exc:  # its "traceback" is the installer's output
                    self.init_error = BatchError(*exc.info())
                except BaseException as exc:  # noqa: BLE001 - any init failure is the job's error
                    self.init_error = BatchError.from_exception(exc)
                self._announce(INIT_EVENT, {"job_id": self.context.job_id})
        return self.handler

    def _announce(self, topic: str, event: dict) -> None:
        """A worker event, sent from the worker's event loop (handler code runs on threads)."""
        if self._worker is not None:
            self._worker.loop.add_callback(self._worker.log_event, topic, event)

    # -- batches ------------------------------------------------------------------------------
    def run_chunk(self, refs: list) -> ChunkResult:
        """Run a chunk of batches; every batch gets its own outcome."""
        result = ChunkResult(worker=self.worker_address, pid=os.getpid())
        if self.cancelled:
            result.not_run = [r.key for r in refs]
            return result
        self._ensure_handler()
        if self.init_error is not None:
            result.init_error = self.init_error
            result.logs = install_collector().drain(self.context.job_id)  # the installer's output
            return result
        payloads = load_payloads(refs, self.context.storage_options, self.context.job_id)
        with self.host.running():  # once per chunk: cwd, output capture, the handler lock
            for ref, payload in zip(refs, payloads, strict=True):
                if self.cancelled:
                    result.not_run.append(ref.key)
                    continue
                try:
                    outcome = self._run_one(ref, payload)
                except BatchTimeout as exc:  # raised just after the batch ended: still counts
                    outcome = BatchOutcome(ref.key, False, 0.0, BatchError.from_exception(exc))
                result.outcomes.append(outcome)
                if ref.segments and ref.size == 1 and not outcome.ok:
                    result.failed_items[ref.key] = _single(payload)  # the dead letter shows it
        self._drain_into(result)
        return result

    def _drain_into(self, result: ChunkResult | CompletionResult) -> None:
        """What the job's code left for the driver: log lines, metrics, jobs it submitted."""
        result.logs = install_collector().drain(self.context.job_id)
        result.metrics = self.host.metrics.drain()
        result.triggered = self.host.triggered()

    def _run_one(self, ref: Any, payload: Any) -> BatchOutcome:
        start = time.perf_counter()
        batch_id = batch_id_for(self.context.job_id, ref.index, ref.path)
        try:
            if isinstance(payload, BaseException):
                raise payload
            with log_context(batch_id=batch_id):
                if self._watchdog is None:
                    value = self._call_batch(payload, batch_id)
                else:
                    with self._watchdog.watching(ref.key):
                        value = self._call_batch(payload, batch_id)
            if value is not None and self.context.output:
                ids = item_ids(payload, self.context.id_key)
                self._output_writer().commit(ref.index, value, ref.path, ids)
        except BatchTimeout:
            limit = self.context.batch_timeout
            exc = BatchTimeout(f"batch ran longer than its batch_timeout of {limit} s")
            return self._failed(ref, start, exc)
        except Exception as exc:  # noqa: BLE001 - a handler failure fails only its batch
            return self._failed(ref, start, exc)
        self.batches_run += 1
        return BatchOutcome(ref.key, True, time.perf_counter() - start)

    @staticmethod
    def _failed(ref: Any, start: float, exc: BaseException) -> BatchOutcome:
        seconds = time.perf_counter() - start
        return BatchOutcome(ref.key, False, seconds, BatchError.from_exception(exc))

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

    def run_complete(self) -> CompletionResult:
        """Call on_job_complete once; prefers this worker's existing Handler instance."""
        result = CompletionResult(worker=self.worker_address)
        method = self.context.signature.get("complete_method")
        handler = self._ensure_handler()
        if self.init_error is not None:
            result.error = self.init_error
        elif method:
            try:
                with self.host.running():
                    getattr(handler, method)()
                result.ran = True
            except Exception as exc:  # noqa: BLE001
                result.error = BatchError.from_exception(exc)
        self._drain_into(result)
        return result


def _single(payload: Any) -> Any:
    """The one item of a one-item payload (None when it could not even be read)."""
    return payload[0] if isinstance(payload, list) and len(payload) == 1 else None


def item_ids(payload: Any, id_key: str | None) -> list | None:
    """The ids of a payload's items, when the job names an ``id_key``."""
    if id_key is None or not isinstance(payload, list):
        return None
    return [item_id(item, id_key) for item in payload]


def _plugin(name: str) -> JobPlugin:
    try:
        return get_worker().plugins[name]
    except KeyError:
        raise RuntimeError(f"job plugin {name} is not registered on this worker") from None


def run_chunk_task(name: str, packed: bytes) -> ChunkResult:
    """Dask task: run a chunk of batches on this worker's Handler.

    The chunk arrives pickled (:func:`~dask_batchapi.protocol.pack_chunk`): the scheduler then
    handles one bytes object, never the items, and a message it keeps in its log is compact."""
    plugin = get_worker().plugins.get(name)
    refs = unpack_chunk(packed)
    if plugin is None:  # a worker not leased to the job (its own died): nothing of it runs here
        return ChunkResult(worker="", pid=os.getpid(), not_run=[r.key for r in refs], foreign=True)
    return plugin.run_chunk(refs)


def run_complete_task(name: str) -> CompletionResult:
    """Dask task: run on_job_complete on this worker's Handler."""
    return _plugin(name).run_complete()


def cancel_job(name: str, dask_worker=None) -> None:
    """``client.run`` target: no further batch of the job starts on this worker."""
    plugin = (dask_worker or get_worker()).plugins.get(name)
    if plugin is not None:
        plugin.cancelled = True
