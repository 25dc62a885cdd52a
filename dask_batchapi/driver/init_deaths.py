"""Worker processes that die while the job's ``Handler.__init__`` runs (``os._exit``, a crash
in C code): the job ends ``worker_error`` naming ``__init__``, not ``completed_with_failures``
after every batch was lost with a dozen workers.

A worker announces (an event, :data:`~dask_batchapi.protocol.INIT_EVENT`) that building
its Handler finished, whatever the outcome; a Python exception in ``__init__`` is reported as
an ``init_error`` anyway. A process that dies inside ``__init__`` never announces it. So when
``limit`` chunks were lost with their worker and no worker of the job has ever finished
building its Handler, the Handler's construction is what kills them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


class InitDeaths:
    """Counts worker deaths before any Handler of the job was built."""

    def __init__(self, limit: int, any_built: Callable[[], bool]):
        self.limit = max(1, limit)
        self._any_built = any_built
        self.built = False
        self.deaths = 0

    def lost(self) -> dict | None:
        """Note a chunk lost with its worker; the job's error once ``__init__`` is to blame."""
        if self.built or self._any_built():
            self.built = True
            return None
        self.deaths += 1
        if self.deaths < self.limit:
            return None
        message = (
            f"Handler.__init__ ended its worker process {self.deaths} times (os._exit, a "
            f"signal or a crash in native code): no worker could build the Handler"
        )
        return {"type": "HandlerInitDied", "message": message, "reason": "handler_init"}
