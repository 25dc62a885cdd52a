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
