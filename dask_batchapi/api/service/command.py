"""``dask-batchapi serve``: the click command (thin: checks, token, then uvicorn)."""

from __future__ import annotations

import logging

import click

from dask_batchapi.api.client import BatchClient


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8888, show_default=True, type=click.IntRange(0, 65535))
@click.option("--store", envvar="DASK_BATCHAPI_STORE", default=None, help="Store URL.")
@click.option(
    "--cluster",
    envvar="DASK_BATCHAPI_CLUSTER",
    default=None,
    help="local | tcp://host:port | kubernetes",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the bearer token (mode 0600); env DASK_BATCHAPI_TOKEN wins.",
)
@click.option("--certfile", type=click.Path(dir_okay=False), default=None, help="TLS certificate.")
@click.option("--keyfile", type=click.Path(dir_okay=False), default=None, help="TLS private key.")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP on a non-loopback --host.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def serve(
    host: str,
    port: int,
    store: str | None,
    cluster: str | None,
    token_file: str | None,
    certfile: str | None,
    keyfile: str | None,
    insecure: bool,
    log_level: str,
) -> None:
    """Serve Cortex's HTTP job API, a jobs dashboard and Prometheus metrics."""
    from dask_batchapi.api.service import server
    from dask_batchapi.api.service.app import create_app
    from dask_batchapi.api.service.auth import resolve_token

    listener = server.Listener(host, port, certfile, keyfile)
    server.check_listener(listener, insecure)
    client = BatchClient(store=store, cluster=cluster)
    sock = server.bind(listener)
    bound = sock.getsockname()[1]
    token, written = resolve_token(token_file, bound)
    app = create_app(client, token, f"dask-batchapi-{bound}", secure=listener.tls)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    url = listener.url(bound)
    click.echo(f"dask-batchapi serve: store {client.store.url}, listening on {url}", err=True)
    if written is not None:
        click.echo(f"token written to {written} (mode 0600); open the dashboard at:", err=True)
        click.echo(f"    {url}/?token={token}", err=True)
    else:
        click.echo(f"dashboard: {url}/?token=<your token>", err=True)
    server.run(app, sock, listener, log_level)
