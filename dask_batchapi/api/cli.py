"""The ``dask-batchapi`` command line: thin commands over :mod:`dask_batchapi.api.client`.

Every user error prints one line (``error: ...``) and exits 1; no tracebacks.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from dask_batchapi.api.client import BatchClient, Job
from dask_batchapi.api.service.command import serve
from dask_batchapi.api.tables import api_rows, cluster_text, dead_row, job_detail, job_rows
from dask_batchapi.api.tables import table as _table
from dask_batchapi.errors import BatchAPIError, JobStateError
from dask_batchapi.spec.api_spec import load_submission
from dask_batchapi.status import JobStatus


class _Group(click.Group):
    """Turns our errors and click's usage errors into one line (exit codes 1 and 2)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchAPIError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except click.UsageError as exc:
            # click's default is a usage block plus "Error: ..."; the contract is one line
            hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            ctx.exit(exc.exit_code)


store_option = click.option(
    "--store",
    envvar="DASK_BATCHAPI_STORE",
    default=None,
    help="Store URL (local dir or s3://bucket/prefix).",
)
cluster_option = click.option(
    "--cluster",
    envvar="DASK_BATCHAPI_CLUSTER",
    default=None,
    help="local | tcp://host:port | kubernetes",
)
output_option = click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["pretty", "json"]),
    default="pretty",
    help="Output format.",
)


def _client(store: str | None, cluster: str | None = None) -> BatchClient:
    return BatchClient(store=store, cluster=cluster)


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dask-batchapi")
def main() -> None:
    """Run Cortex-style Batch API jobs on Dask."""


@main.command()
@click.argument("project_dir", type=click.Path())
@store_option
def deploy(project_dir: str, store: str | None) -> None:
    """Register or update the API(s) of PROJECT_DIR (or of a spec file; its folder is the
    project) in the store."""
    apis = _client(store).deploy(project_dir)
    for api in apis if isinstance(apis, list) else [apis]:
        click.echo(f"deployed {api.name} (BatchAPI, {len(api.record['files'])} files)")


@main.command()
@click.argument("api_name")
@click.argument("submission_file")
@click.option("--wait", is_flag=True, help="Block with a progress bar; exit 0 only on success.")
@click.option(
    "--dry-run", is_flag=True, help="Validate and list the matched inputs; submit nothing."
)
@click.option("--workers", type=int, default=None, help="Override the submission's workers.")
@cluster_option
@store_option
@output_option
def submit(
    api_name: str,
    submission_file: str,
    wait: bool,
    dry_run: bool,
    workers: int | None,
    cluster: str | None,
    store: str | None,
    fmt: str,
) -> None:
    """Submit a job (SUBMISSION_FILE is Cortex's JSON; '-' reads stdin); prints the job id."""
    client = _client(store, cluster)
    submission = load_submission(submission_file, stdin=sys.stdin)
    if dry_run:
        for url in client.dry_run(api_name, submission):
            click.echo(url)
        click.echo("validations passed")
        return
    _report_started(client.submit(api_name, submission, workers=workers), wait, fmt)


def _report_started(job: Job, wait: bool, fmt: str) -> None:
    """Print a started job's id (or its record with ``-o json``); with ``wait``, wait for it."""
    if fmt == "json" and not wait:
        _echo_json(job.client.store.get_job(job.api_name, job.job_id).job_fields())
        return
    if fmt != "json":
        click.echo(job.job_id)
    if wait:
        _wait_and_exit(job, fmt)


def _wait_and_exit(job: Job, fmt: str) -> None:
    from dask_batchapi.api.widgets import TextProgress

    try:
        final = TextProgress(job._poll, interval=0.25).run() if fmt != "json" else _poll_final(job)
    except KeyboardInterrupt:
        click.echo(f"\nstopped waiting; job {job.job_id} keeps running", err=True)
        sys.exit(130)
    status = final["job_status"]
    if fmt == "json":
        _echo_json(final)
    if status.get("interrupted"):
        click.echo(
            f"error: job {job.job_id} was interrupted; run: {status['resume_command']}", err=True
        )
        sys.exit(1)
    if status["status"] != JobStatus.SUCCEEDED.value:
        error = (status.get("error") or {}).get("message")
        click.echo(
            f"job {job.job_id} ended {status['status']}" + (f": {error}" if error else ""), err=True
        )
        sys.exit(1)
    if fmt != "json" and job.output_location:
        click.echo(f"outputs: {job.output_location}")


def _poll_final(job: Job) -> dict:
    try:
        job.wait(poll=0.2)
    except JobStateError:
        pass  # interrupted: the caller reports it from the status document
    return job.status


@main.command()
@click.argument("api_name", required=False)
@click.argument("job_id", required=False)
@store_option
@output_option
def get(api_name: str | None, job_id: str | None, store: str | None, fmt: str) -> None:
    """List APIs, the jobs of an API, or one job's status."""
    client = _client(store)
    if api_name is None:
        _print_apis(client, fmt)
    elif job_id is None:
        _print_jobs(client, api_name, fmt)
    else:
        doc = client.get_job(api_name, job_id).status
        _echo_json(doc) if fmt == "json" else click.echo(job_detail(doc["job_status"]))


def _print_apis(client: BatchClient, fmt: str) -> None:
    rows = api_rows(client.list_apis())
    if fmt == "json":
        _echo_json(rows)
    elif not rows:
        click.echo("no apis are deployed")
    else:
        click.echo(_table(rows))


def _print_jobs(client: BatchClient, api_name: str, fmt: str) -> None:
    jobs = client.list_jobs(api_name)
    if fmt == "json":
        _echo_json(jobs)
    elif not jobs:
        click.echo(f"no jobs for {api_name}")
    else:
        click.echo(_table(job_rows(jobs)))


@main.command()
@click.argument("api_name")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@store_option
def logs(api_name: str, job_id: str, follow: bool, store: str | None) -> None:
    """Print a job's log lines (every worker and the driver)."""
    for line in _client(store).log_lines(api_name, job_id, follow=follow):
        click.echo(line)


@main.command()
@click.argument("api_name")
@click.argument("job_id")
@store_option
def stop(api_name: str, job_id: str, store: str | None) -> None:
    """Stop a job: no new batch starts, in-flight work is cancelled."""
    _client(store).stop_job(api_name, job_id)
    click.echo(f"stopping job {job_id}")


@main.command()
@click.argument("api_name")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Block with a progress bar; exit 0 only on success.")
@click.option("--force", is_flag=True, help="Resume even if the API was redeployed since.")
@cluster_option
@store_option
@output_option
def resume(
    api_name: str,
    job_id: str,
    wait: bool,
    force: bool,
    cluster: str | None,
    store: str | None,
    fmt: str,
) -> None:
    """Finish an interrupted job; batches that succeeded are not rerun."""
    job = _client(store).resume_job(api_name, job_id, cluster=cluster, force=force)
    _report_started(job, wait, fmt)


@main.command()
@click.argument("api_name")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Block with a progress bar; exit 0 only on success.")
@cluster_option
@store_option
@output_option
def retry(
    api_name: str, job_id: str, wait: bool, cluster: str | None, store: str | None, fmt: str
) -> None:
    """Submit a new job of only JOB_ID's dead-lettered batches; prints the new job id."""
    _report_started(_client(store).retry_job(api_name, job_id, cluster=cluster), wait, fmt)


@main.command("dead-letter")
@click.argument("api_name")
@click.argument("job_id")
@store_option
@output_option
def dead_letter(api_name: str, job_id: str, store: str | None, fmt: str) -> None:
    """List a job's failed batches: batch id, payload, error, attempts."""
    records = _client(store).dead_letter(api_name, job_id)
    if fmt == "json":
        _echo_json(records)
    elif not records:
        click.echo("no failed batches")
    else:
        items = any("item_index" in r for r in records)  # isolated items: one row each
        click.echo(_table([dead_row(r, items) for r in records]))


@main.command("cluster")
@cluster_option
@output_option
def cluster_(cluster: str | None, fmt: str) -> None:
    """Show the cluster's workers, the job holding each, and the job queue."""
    status = BatchClient(cluster=cluster).cluster_status()
    if fmt == "json":
        _echo_json(status)
        return
    click.echo(cluster_text(status))


@main.command()
@click.argument("api_name")
@store_option
def delete(api_name: str, store: str | None) -> None:
    """Delete an API and its jobs from the store (running jobs are stopped)."""
    _client(store).delete_api(api_name)
    click.echo(f"deleted {api_name}")


main.add_command(serve)

if __name__ == "__main__":
    main()
