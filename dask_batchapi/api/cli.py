"""The ``dask-batchapi`` command line: thin commands over :mod:`dask_batchapi.api.client`.

Every user error prints one line (``error: ...``) and exits 1; no tracebacks.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from dask_batchapi.api.client import BatchClient, Job
from dask_batchapi.api.tables import cluster_text
from dask_batchapi.api.tables import table as _table
from dask_batchapi.errors import BatchAPIError, JobStateError
from dask_batchapi.spec.api_spec import load_submission
from dask_batchapi.status import JobStatus, parse_iso


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
@click.argument("project_dir", type=click.Path(file_okay=False))
@store_option
def deploy(project_dir: str, store: str | None) -> None:
    """Register or update the API(s) of PROJECT_DIR in the store."""
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
        _echo_json(doc) if fmt == "json" else click.echo(_job_detail(doc["job_status"]))


def _print_apis(client: BatchClient, fmt: str) -> None:
    rows = []
    for api in client.list_apis():
        jobs = api.jobs()
        running = sum(1 for j in jobs if not JobStatus(j["status"]).is_terminal)
        rows.append(
            {
                "api": api.name,
                "running jobs": running,
                "latest job id": jobs[0]["job_id"] if jobs else "-",
                "last update": api.record["deployed_time"],
            }
        )
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
        return
    if not jobs:
        click.echo(f"no jobs for {api_name}")
        return
    click.echo(
        _table(
            [
                {
                    "job id": j["job_id"],
                    "status": _status_text(j),
                    "progress": f"{j['batch_metrics']['succeeded']}/{j['total_batch_count'] or '?'}",
                    "failed": j["batch_metrics"]["failed"],
                    "workers": _workers_text(j),
                    "queue": j.get("queue_position") or "-",
                    "start time": j["start_time"] or "-",
                    "duration": _duration(j),
                }
                for j in jobs
            ]
        )
    )


def _workers_text(j: dict) -> str:
    """Held/asked workers of a job: the cluster may give it fewer than it asked for."""
    return f"{j['worker_counts']['running']}/{j['workers']}"


def _status_text(j: dict) -> str:
    return f"{j['status']} (interrupted)" if j.get("interrupted") else j["status"]


def _duration(j: dict) -> str:
    start = parse_iso(j.get("start_time"))
    if start is None:
        return "-"
    end = parse_iso(j.get("end_time")) or time.time()
    return f"{end - start:.1f}s"


def _job_detail(j: dict) -> str:
    m = j["batch_metrics"]
    avg = m["average_time_per_batch"]
    lines = [
        f"job id: {j['job_id']}",
        f"status: {_status_text(j)}",
        f"start time: {j['start_time'] or '-'}",
        f"end time: {j['end_time'] or '-'}",
        f"duration: {_duration(j)}",
        "",
        _table(
            [
                {
                    "total": j["total_batch_count"] if j["total_batch_count"] is not None else "?",
                    "succeeded": m["succeeded"],
                    "failed attempts": m["failed"],
                    "dead lettered": m["dead_lettered"],
                    "lost": m["lost"],
                    "avg time per batch": f"{avg * 1000:.1f}ms" if avg is not None else "-",
                }
            ]
        ),
        "",
        f"workers: {j['worker_counts']['running']} held / {j['workers']} asked",
    ]
    if j.get("queue_position"):
        lines.append(f"queue position: {j['queue_position']} (waiting for a free worker)")
    if j.get("error"):
        lines.append(f"error: {j['error'].get('message')}")
    if j.get("interrupted"):
        lines.append(f"the job's driver died; resume it: {j['resume_command']}")
    return "\n".join(lines)


@main.command()
@click.argument("api_name")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@store_option
def logs(api_name: str, job_id: str, follow: bool, store: str | None) -> None:
    """Print a job's log lines (every worker and the driver)."""
    from dask_batchapi.driver.ledger import read_logs

    client = _client(store)
    job = client.get_job(api_name, job_id)
    after = None
    while True:
        lines, after = read_logs(client.store, api_name, job_id, after)
        for line in lines:
            click.echo(line)
        if not follow:
            return
        doc = job.status["job_status"]
        if JobStatus(doc["status"]).is_terminal or doc["interrupted"]:
            lines, after = read_logs(client.store, api_name, job_id, after)
            for line in lines:
                click.echo(line)
            return
        time.sleep(0.5)


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
@cluster_option
@store_option
@output_option
def resume(
    api_name: str, job_id: str, wait: bool, cluster: str | None, store: str | None, fmt: str
) -> None:
    """Finish an interrupted job; batches that succeeded are not rerun."""
    _report_started(_client(store).resume_job(api_name, job_id, cluster=cluster), wait, fmt)


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
        click.echo(
            _table(
                [
                    {"batch id": r["batch_id"], "attempts": r["attempts"], "error": r["error"][:80]}
                    for r in records
                ]
            )
        )


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


if __name__ == "__main__":
    main()
