"""How a driver learns what happened to chunks that never returned, and how it words errors.

:class:`RemovalHub` subscribes once per client to the scheduler's ``all`` events (a client keeps
a single handler per topic) and fans ``remove-worker`` events out to every driver using that
client: on clusters that reschedule lost tasks by themselves, that is the only sign a batch ran
on a lost worker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

from distributed import Client, Future

from dask_batchapi.protocol import BatchError

logger = logging.getLogger(__name__)


class RemovalHub:
    """One subscription to the scheduler's ``all`` events per client, fanned out to every
    driver using that client (a client keeps a single handler per topic)."""

    _listeners: dict[int, list[queue.SimpleQueue]] = {}
    _lock = threading.Lock()

    @classmethod
    def listen(cls, client: Client, sink: queue.SimpleQueue) -> None:
        with cls._lock:
            sinks = cls._listeners.setdefault(id(client), [])
            sinks.append(sink)
            if len(sinks) > 1:
                return

        def fan_out(event: Any, sinks: list = sinks) -> None:
            for target in list(sinks):
                target.put(event)

        try:
            client.subscribe_topic("all", fan_out)
        except Exception as exc:  # noqa: BLE001 - losses are then seen as KilledWorker only
            logger.debug("cannot subscribe to scheduler events: %s", exc)

    @classmethod
    def forget(cls, client: Client, sink: queue.SimpleQueue) -> None:
        with cls._lock:
            sinks = cls._listeners.get(id(client), [])
            if sink in sinks:
                sinks.remove(sink)
            if sinks:
                return
            cls._listeners.pop(id(client), None)
        try:
            client.unsubscribe_topic("all")
        except Exception:  # noqa: BLE001 - not subscribed, or the cluster is gone
            pass


def lost_info(future: Future) -> BatchError:
    """The error of a chunk whose worker was lost (the future tells how)."""
    try:
        exc = future.exception(timeout=5) or RuntimeError(future.status)
    except BaseException as caught:  # noqa: BLE001 - cancelled futures raise here
        exc = caught
    return BatchError("WorkerLost", f"worker lost: {type(exc).__name__}: {exc}")


def timeout_info(seconds: float | None) -> BatchError:
    """The error of a batch whose worker was restarted past its ``batch_timeout``."""
    return BatchError("BatchTimeout", f"batch ran longer than its batch_timeout of {seconds} s")


def error_dict(reason: str, exc: BaseException) -> dict:
    """The job's ``error`` in the status document for an exception the driver caught."""
    return {"type": type(exc).__name__, "message": str(exc), "reason": reason}


class LossWatcher:
    """What a driver learns about chunks lost with their workers, beyond failed futures.

    On clusters that reschedule lost tasks by themselves (``allowed-failures`` > 0) a chunk's
    future never fails, yet its batches ran on a lost worker: the scheduler's ``remove-worker``
    events (through :class:`RemovalHub`) say so, and each such chunk is counted once. Worker
    events (batch timeouts, the nanny's memory kills, Handler builds) are read here too.
    """

    def __init__(self, client: Client):
        self.client = client
        self._removals: queue.SimpleQueue = queue.SimpleQueue()
        self._counted: set[str] = set()  # chunk keys whose loss was counted from an event

    def listen(self) -> None:
        RemovalHub.listen(self.client, self._removals)

    def forget(self) -> None:
        RemovalHub.forget(self.client, self._removals)

    def removed_chunks(self, inflight: dict) -> Iterator[tuple[str, Any]]:
        """``(key, worker)`` of each chunk in ``inflight`` (key -> entry) that was processing
        on a worker removed since the last call, once per chunk."""
        while True:
            try:
                _, event = self._removals.get_nowait()
            except queue.Empty:
                return
            if not isinstance(event, dict) or event.get("action") != "remove-worker":
                continue
            for key in set(event.get("processing-tasks", ())) & set(inflight):
                if key not in self._counted:
                    self._counted.add(key)
                    yield key, event.get("worker")

    def was_counted(self, key: str) -> bool:
        """Whether the loss of chunk ``key`` was counted from an event (then forget it)."""
        counted = key in self._counted
        self._counted.discard(key)
        return counted

    def finished(self, key: str) -> None:
        """Chunk ``key`` finished after all (Dask reran it elsewhere)."""
        self._counted.discard(key)

    def events(self, topic: str, since: float, key: str | None = None, value: Any = None) -> list:
        """The scheduler's events of ``topic`` since ``since`` (those whose ``key`` is
        ``value``, if given); none while the scheduler cannot be reached."""
        try:
            events = self.client.get_events(topic)
        except Exception:  # noqa: BLE001 - the scheduler may be unreachable right now
            return []
        return [m for t, m in events if t >= since - 1 and (key is None or m.get(key) == value)]
