"""Cortex's Python client names, as thin layers over :class:`~dask_batchapi.api.client.BatchClient`.

Scripts written for Cortex's client keep working (Cortex v0.31/0.32 ``cortex.client.Client``)::

    cx = batchapi.client("aws")                      # or: import cortex; cx = cortex.client("aws")
    cx.create_api(api_spec, project_dir=".")         # the spec as a dict; nothing is written
    cx.get_api("my-api")["spec"]                     # also "endpoint", "batch_job_statuses"
    cx.list_apis()
    cx.get_job("my-api", job_id)["job_status"]["status"]
    cx.stream_job_logs("my-api", job_id)             # prints, follows until the job ends
    cx.stop_job("my-api", job_id, keep_cache=False)
    cx.delete_api("my-api", keep_cache=False)

``get_api`` / ``get_job`` return the usual :class:`BatchAPI` / :class:`Job` objects, which are
also read-only mappings of Cortex's shape (:class:`APIMapping`, :class:`JobMapping`); every
lookup reads the store afresh. ``endpoint`` is the API's URL on the job service
(``dask-batchapi serve``) when dask config ``batchapi.service-url`` says where it runs, else
None.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from dask_batchapi import config
from dask_batchapi.errors import SpecError

logger = logging.getLogger(__name__)


def endpoint(api_name: str) -> str | None:
    """The API's URL on the job service, when ``batchapi.service-url`` is set; else None."""
    base = config.get("service-url")
    return f"{str(base).rstrip('/')}/{api_name}" if base else None


class _View(Mapping):
    """A read-only mapping whose items are computed on each lookup (fresh from the store).

    Equality and hashing stay those of the object: two handles are never "equal" because two
    jobs happen to have the same status right now.
    """

    _KEYS: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return self._item(key)

    def _item(self, key: str) -> Any:
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    __eq__ = object.__eq__
    __hash__ = object.__hash__


class JobMapping(_View):
    """Cortex's ``get_job`` result: ``job_status``, ``api_spec``, ``endpoint``."""

    _KEYS = ("job_status", "api_spec", "endpoint")

    def _item(self, key: str) -> Any:
        if key == "endpoint":
            return endpoint(self.api_name)
        return self.status[key]


class APIMapping(_View):
    """Cortex's ``get_api`` result: ``spec``, ``endpoint``, ``batch_job_statuses``."""

    _KEYS = ("spec", "endpoint", "batch_job_statuses")

    def _item(self, key: str) -> Any:
        if key == "spec":
            return self.spec
        if key == "endpoint":
            return endpoint(self.name)
        return self.jobs()


class CortexClientNames:
    """Cortex's client methods that :class:`BatchClient` has under no other name."""

    def create_api(
        self,
        api_spec: dict,
        predictor: Any = None,
        task: Any = None,
        requirements: list | None = None,
        conda_packages: list | None = None,
        project_dir: str | None = None,
        force: bool = True,
        wait: bool = False,
    ) -> Any:
        """Deploy the API that ``api_spec`` (a dict, as in ``cortex.yaml``) declares, with the
        files of ``project_dir``: the same checks as :meth:`deploy`, and nothing is written
        into ``project_dir``. ``force`` and ``wait`` are accepted and change nothing (a deploy
        here is complete when it returns). Returns the :class:`BatchAPI`.

        >>> cx.create_api({"name": "my-api", "kind": "BatchAPI",
        ...                "handler": {"type": "python", "path": "handler.py"}},
        ...               project_dir="my-api")  # doctest: +SKIP
        <BatchAPI 'my-api' ...>
        """
        if predictor is not None or task is not None:
            raise SpecError(
                "create_api(predictor=/task=) is not supported: put the Handler class in a file "
                "of project_dir and name it in api_spec's handler.path"
            )
        if requirements or conda_packages:
            raise SpecError(
                "create_api(requirements=/conda_packages=) is not supported: list them in "
                "project_dir's requirements.txt / conda-packages.txt"
            )
        if project_dir is None:
            raise SpecError("create_api needs project_dir: the folder with the handler's files")
        return self.deploy(project_dir, api_spec=api_spec)

    def stream_job_logs(self, api_name: str, job_id: str) -> None:
        """Print the job's log lines to stdout, following new ones until the job ends.

        Cortex's client prints here (it runs ``cortex logs``); :meth:`log_lines` is the same
        stream as an iterator of lines, for code that wants them.
        """
        for line in self.log_lines(api_name, job_id, follow=True):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
