"""The Python surface: ``client()``, :class:`BatchClient`, :class:`BatchAPI` and :class:`Job`.

>>> import dask_batchapi as batchapi
>>> api = batchapi.deploy("examples/word-count")                       # doctest: +SKIP
>>> job = api.submit({"workers": 2, "item_list": {"items": ["a b", "c"], "batch_size": 1}})  # doctest: +SKIP
>>> job.wait()                                                          # doctest: +SKIP
'succeeded'
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from dask_batchapi import config
from dask_batchapi.api import environments, jobs
from dask_batchapi.api.compat import warn_if_cortex_package
from dask_batchapi.api.cortex_names import APIMapping, CortexClientNames, JobMapping
from dask_batchapi.driver import launch
from dask_batchapi.driver.ledger import read_dead_letter, read_logs
from dask_batchapi.errors import JobNotFound, JobStateError, StoreError
from dask_batchapi.spec.api_spec import Submission, parse_submission
from dask_batchapi.status import JobStatus
from dask_batchapi.store.checks import unreadable_job
from dask_batchapi.store.jobstore import JobStore

logger = logging.getLogger(__name__)


class BatchClient(CortexClientNames):
    """A Cortex-like client bound to one store and one default cluster.

    It also answers to Cortex's client names (:mod:`dask_batchapi.api.cortex_names`):
    ``create_api``, ``get_api``, ``list_apis``, ``get_job``, ``stop_job``, ``delete_api``,
    ``stream_job_logs``.

    Parameters
    ----------
    store : str, optional
        Store URL (local directory or fsspec URL); default from ``DASK_BATCHAPI_STORE`` or
        dask config ``batchapi.store``.
    cluster : str, Client or cluster object, optional
        ``"local"`` (the machine's shared embedded LocalCluster), a scheduler address, or a live
        ``distributed.Client`` / cluster object to reuse.
    """

    def __init__(self, store: str | None = None, cluster: Any = None):
        warn_if_cortex_package()
        self.store = JobStore(store)
        self.cluster = cluster

    def __repr__(self) -> str:
        return f"BatchClient(store={self.store.url!r})"

    # -- APIs ---------------------------------------------------------------------------------
    def deploy(
        self, project_dir: str | os.PathLike, api_spec: dict | None = None
    ) -> BatchAPI | list[BatchAPI]:
        """Deploy a project directory; a BatchAPI (a list when the spec holds several).

        ``api_spec``: the spec as a dict instead of the project's spec file (``create_api``).
        """
        records = jobs.deploy(self.store, project_dir, api_spec=api_spec)
        apis = [BatchAPI(self, r) for r in records]
        return apis[0] if len(apis) == 1 else apis

    def get_api(self, api_name: str) -> BatchAPI:
        """The deployed API (also Cortex's mapping: ``api["spec"]``, ``api["endpoint"]``)."""
        return BatchAPI(self, self.store.get_api(api_name))

    def list_apis(self) -> list[BatchAPI]:
        return [BatchAPI(self, r) for r in self.store.list_apis()]

    def delete_api(
        self, api_name: str, keep_cache: bool = False, stop_timeout: float = 15.0
    ) -> None:
        """Stop the API's running jobs and remove it and its jobs from the store.

        ``keep_cache`` (Cortex's) changes nothing here: the API's data is its store entry,
        always removed; what workers cache is keyed by content and shared between APIs.
        """
        self.store.get_api(api_name)
        running = [
            j
            for j in self.list_jobs(api_name)
            if not j.get("unreadable")
            and not JobStatus(j["status"]).is_terminal
            and not j.get("interrupted")
        ]
        for job in running:
            with contextlib.suppress(JobStateError):  # it ended since it was listed
                jobs.stop_job(self.store, api_name, job["job_id"])
        deadline = time.time() + stop_timeout
        for job in running:
            while time.time() < deadline and not self._ended(api_name, job["job_id"]):
                time.sleep(0.2)
        self.store.delete_api(api_name)

    def _ended(self, api_name: str, job_id: str) -> bool:
        doc = jobs.job_status(self.store, api_name, job_id)["job_status"]
        return JobStatus(doc["status"]).is_terminal or doc["interrupted"]

    # -- jobs ---------------------------------------------------------------------------------
    def submit(
        self,
        api_name: str,
        submission: dict | Submission,
        *,
        workers: int | None = None,
        cluster: Any = None,
    ) -> Job:
        """Validate and submit a job; returns at once (``job.wait()`` to block)."""
        api = self.store.get_api(api_name)
        parsed = submission if isinstance(submission, Submission) else parse_submission(submission)
        parsed = jobs.with_workers(parsed, workers)
        target = self._target(cluster)
        jobs.check_cluster(target, self.store.url, jobs.data_urls(parsed))
        record = jobs.create_job(self.store, api, parsed, target)
        driver = launch.start_job(self.store, record, target)
        return Job(self, api_name, record.job_id, driver=driver)

    def dry_run(self, api_name: str, submission: dict | Submission) -> list[str]:
        """Validate a submission without submitting; the matched input URLs (none for items)."""
        self.store.get_api(api_name)
        parsed = submission if isinstance(submission, Submission) else parse_submission(submission)
        return jobs.matched_files(parsed)

    def get_job(self, api_name: str, job_id: str) -> Job:
        """The job (also Cortex's mapping: ``job["job_status"]["status"]``)."""
        self.store.get_job(api_name, job_id)
        return Job(self, api_name, job_id)

    def list_jobs(
        self, api_name: str, limit: int | None = None, skip_unreadable: bool = False
    ) -> list[dict]:
        """The ``job_status`` part of every job of the API (the ``limit`` newest), newest first.

        ``skip_unreadable``: leave out (and log) a job whose files in the store are damaged,
        instead of raising StoreError (a dashboard shows the other jobs)."""
        api_spec = self.store.get_api(api_name)["spec"]
        statuses = []
        for job_id in self.store.list_job_ids(api_name)[:limit]:
            try:
                doc = jobs.job_status(self.store, api_name, job_id, api_spec)
                statuses.append(doc["job_status"])
            except JobNotFound:
                continue  # being submitted right now: its record is not written yet
            except StoreError as exc:  # one corrupted job: marked (or left out), others listed
                if skip_unreadable:
                    logger.warning("job %s/%s left out: %s", api_name, job_id, exc)
                else:
                    statuses.append(unreadable_job(api_name, job_id, exc))
        return statuses

    def stop_job(self, api_name: str, job_id: str, keep_cache: bool = False) -> None:
        """Ask the job to stop; in-flight batches are cancelled. ``keep_cache`` (Cortex's)
        changes nothing: a stopped job keeps its ledger, dead letter and logs in the store."""
        jobs.stop_job(self.store, api_name, job_id)

    def resume_job(
        self, api_name: str, job_id: str, cluster: Any = None, force: bool = False
    ) -> Job:
        """Finish an interrupted job; batches already succeeded are not rerun.

        Refuses (``APIRedeployed``) when the API was redeployed since the job ran, unless
        ``force``: the rest then runs with the new version, recorded in the status document."""
        record = jobs.prepare_resume(self.store, api_name, job_id, force=force)
        target = cluster if cluster is not None else self.cluster
        target = target if target is not None else record.cluster
        target = "local" if target == "client" and cluster is None else target
        jobs.check_cluster(target, self.store.url, jobs.data_urls(record.submission))
        driver = launch.start_job(self.store, record, target)
        return Job(self, api_name, job_id, driver=driver)

    def retry_job(self, api_name: str, job_id: str, cluster: Any = None) -> Job:
        """A new job of only the dead-lettered batches of ``job_id``."""
        target = self._target(cluster)
        jobs.check_cluster(target)
        record = jobs.create_retry_job(self.store, api_name, job_id, target)
        driver = launch.start_job(self.store, record, target)
        return Job(self, api_name, record.job_id, driver=driver)

    def _target(self, cluster: Any) -> Any:
        target = cluster if cluster is not None else self.cluster
        return target if target is not None else config.cluster_target()

    def cluster_status(self, cluster: Any = None) -> dict:
        """The cluster's workers, with the job that holds each, and the jobs that hold or wait
        for workers (held/asked counts, priority, queue position; 1 = next).

        >>> batchapi.client().cluster_status()["workers"][0]          # doctest: +SKIP
        {'address': 'tcp://127.0.0.1:40123', 'state': 'ready', 'job_id': 'e5dd...', ...}
        """
        return jobs.cluster_status(self._target(cluster))

    def logs(self, api_name: str, job_id: str) -> list[dict]:
        """Every log line of the job (all workers and the driver), parsed."""
        self.store.get_job(api_name, job_id)
        lines, _ = read_logs(self.store, api_name, job_id)
        return [_parse_line(line) for line in lines]

    def log_lines(
        self, api_name: str, job_id: str, follow: bool = False, poll: float = 0.5
    ) -> Iterator[str]:
        """The job's log lines as stored (JSON text); with ``follow``, also the new ones as
        they come, until the job ends (or its driver dies)."""
        job = self.get_job(api_name, job_id)
        lines, after = read_logs(self.store, api_name, job_id)
        yield from lines
        while follow:
            doc = job.status["job_status"]
            ended = JobStatus(doc["status"]).is_terminal or doc["interrupted"]
            lines, after = read_logs(self.store, api_name, job_id, after)
            yield from lines
            if ended:  # read once more after the end: the last lines were written before it
                return
            time.sleep(poll)

    def dead_letter(self, api_name: str, job_id: str) -> list[dict]:
        self.store.get_job(api_name, job_id)
        return read_dead_letter(self.store, api_name, job_id)


def _parse_line(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        return {"message": line}


class BatchAPI(APIMapping):
    """A deployed API: its spec, and a way to submit and list its jobs.

    Also a read-only mapping of Cortex's shape: ``spec``, ``endpoint``, ``batch_job_statuses``.
    """

    def __init__(self, client: BatchClient, record: dict):
        self.client, self.record = client, record
        self.name: str = record["name"]
        self.spec: dict = record.get("spec") or {}

    def __repr__(self) -> str:
        return f"<BatchAPI {self.name!r} store={self.client.store.url!r}>"

    def submit(self, submission: dict | Submission, **kwargs: Any) -> Job:
        """Submit a job to this API (see :meth:`BatchClient.submit`)."""
        return self.client.submit(self.name, submission, **kwargs)

    def jobs(self) -> list[dict]:
        return self.client.list_jobs(self.name)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(j['job_id'])}</td><td>{html.escape(j['status'])}</td>"
            f"<td>{j['batch_metrics']['succeeded']}/{j['total_batch_count'] or '?'}</td></tr>"
            for j in self.jobs()[:10]
        )
        spec = html.escape(json.dumps(self.spec, indent=2))
        return (
            f"<div><b>BatchAPI {html.escape(self.name)}</b><pre>{spec}</pre>"
            f"<table><tr><th>job id</th><th>status</th><th>progress</th></tr>{rows}</table></div>"
        )


class Job(JobMapping):
    """A submitted job. In Jupyter, displaying it shows a live progress widget.

    Also a read-only mapping of Cortex's shape: ``job_status``, ``api_spec``, ``endpoint``.
    """

    def __init__(self, client: BatchClient, api_name: str, job_id: str, driver: Any = None):
        self.client, self.api_name, self.job_id = client, api_name, job_id
        self._driver = driver
        self._displays: list = []  # live progress displays, brought to their end by wait()

    def __repr__(self) -> str:
        return f"<Job {self.api_name}/{self.job_id}: {self.status['job_status']['status']}>"

    @property
    def status(self) -> dict:
        """The status document (Cortex's shape)."""
        return jobs.job_status(self.client.store, self.api_name, self.job_id)

    @property
    def metrics(self) -> dict:
        return self.status["job_status"]["batch_metrics"]

    @property
    def output_location(self) -> str | None:
        """Where the job's outputs are (``<output>/<job_id>``), or None without ``output``.

        >>> job.output_location  # doctest: +SKIP
        '/home/me/batchapi-output/word-count/fffe6d1f5b2a9c3e'
        """
        output = self.client.store.get_job(self.api_name, self.job_id).submission.output
        return f"{output.rstrip('/')}/{self.job_id}" if output else None

    def wait(self, timeout: float | None = None, poll: float = 0.1) -> str:
        """Block until the job ends; its final status. JobStateError if its driver died."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            doc = self.status["job_status"]
            if JobStatus(doc["status"]).is_terminal:
                self._settle()
                return doc["status"]
            if doc["interrupted"]:
                raise JobStateError(
                    f"job {self.job_id} was interrupted (its driver died); "
                    f"resume it: {doc['resume_command']}"
                )
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"job {self.job_id} still {doc['status']} after {timeout} s")
            time.sleep(poll)

    def _settle(self, timeout: float = 30) -> None:
        """After the final status: let live displays draw it, and an in-process driver finish
        cleaning the workers (it writes the status first)."""
        for bar in self._displays:
            bar.finish(timeout=10)
        if hasattr(self._driver, "join"):
            self._driver.join(timeout)

    def stop(self) -> None:
        self.client.stop_job(self.api_name, self.job_id)

    def resume(self, cluster: Any = None, force: bool = False) -> Job:
        return self.client.resume_job(self.api_name, self.job_id, cluster=cluster, force=force)

    def logs(self) -> list[dict]:
        return self.client.logs(self.api_name, self.job_id)

    def log_lines(self, follow: bool = False) -> Iterator[str]:
        """Log lines as stored; with ``follow``, until the job ends (see ``BatchClient``)."""
        return self.client.log_lines(self.api_name, self.job_id, follow=follow)

    def dead_letter(self) -> list[dict]:
        """Failed batches: batch_id, payload, error, traceback, attempts (DataFrame-ready)."""
        return self.client.dead_letter(self.api_name, self.job_id)

    def retry(self, cluster: Any = None) -> Job:
        """A new job of only this job's dead-lettered batches."""
        return self.client.retry_job(self.api_name, self.job_id, cluster=cluster)

    def _poll(self) -> dict:
        return self.status

    def progress(self) -> Any:
        """Show live progress: a widget in Jupyter, a text bar elsewhere."""
        from dask_batchapi.api.widgets import progress_widget_or_text

        bar = progress_widget_or_text(self._poll)
        if hasattr(bar, "_ipython_display_"):
            self._displays.append(bar)
            bar._ipython_display_()
        else:
            bar.run()
        return bar

    def _ipython_display_(self) -> None:
        self.progress()


def client(env: str | None = None, store: str | None = None, cluster: Any = None) -> BatchClient:
    """A :class:`BatchClient` (Cortex's ``cortex.client()``).

    Parameters
    ----------
    env : str, optional
        A named environment of dask config ``batchapi.environments`` (its store and cluster);
        an unknown name is an :class:`~dask_batchapi.errors.EnvironmentNotFound`. Without it:
        inside handler code, the job's own store and cluster; elsewhere the defaults.
    store, cluster : optional
        As :class:`BatchClient`'s; they win over the environment's.

    >>> batchapi.client("aws").list_apis()  # doctest: +SKIP
    """
    store, cluster = environments.resolve(env, store, cluster)
    return BatchClient(store=store, cluster=cluster)


def deploy(project_dir: str | os.PathLike, store: str | None = None) -> BatchAPI | list[BatchAPI]:
    """Deploy a project directory to the default (or given) store."""
    return client(store=store).deploy(project_dir)


def get_job(api_name: str, job_id: str, store: str | None = None) -> Job:
    """A job started anywhere that shares the store (re-attach from a fresh kernel)."""
    return client(store=store).get_job(api_name, job_id)
