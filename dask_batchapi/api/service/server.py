"""Running the service: exposure checks, the listening socket, uvicorn.

The socket is bound before uvicorn starts, so ``--port 0`` works and the printed address is
the real one; a generated token is kept per port (``token-<port>``).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from dask_batchapi.errors import ServiceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listener:
    """What ``serve`` listens on, and how."""

    host: str
    port: int
    certfile: str | None = None
    keyfile: str | None = None

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{port or self.port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listener(listener: Listener, insecure: bool) -> None:
    """ServiceError unless TLS is whole (both files, readable) and, off loopback, used."""
    if (listener.certfile is None) != (listener.keyfile is None):
        raise ServiceError("--certfile and --keyfile go together: give both for TLS, or neither")
    for option, path in (("--certfile", listener.certfile), ("--keyfile", listener.keyfile)):
        if path is not None and not Path(path).is_file():
            raise ServiceError(f"{option} {path!r} is not a readable file")
    if not listener.tls and not insecure and not is_loopback(listener.host):
        raise ServiceError(
            f"--host {listener.host} is not a loopback address: the token would cross the network "
            "in clear; give --certfile and --keyfile (TLS), or --insecure to serve plain HTTP anyway"
        )


def bind(listener: Listener) -> socket.socket:
    """The listening socket (``port`` 0: any free port; see ``getsockname``)."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listener.host, listener.port))
    except OSError as error:
        sock.close()
        where = f"{listener.host}:{listener.port}"
        raise ServiceError(f"cannot listen on {where}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(app, sock: socket.socket, listener: Listener, log_level: str = "info") -> None:
    """Serve ``app`` on ``sock`` until SIGINT/SIGTERM (uvicorn's graceful shutdown)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=listener.host,
        port=sock.getsockname()[1],
        ssl_certfile=listener.certfile,
        ssl_keyfile=listener.keyfile,
        log_level=log_level,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])
