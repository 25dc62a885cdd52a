"""The service's token: where it comes from, and the ASGI middleware that checks it.

Every request needs ``Authorization: Bearer <token>``, compared in constant time. A browser
opens the dashboard once with ``?token=<token>``; the service then sets an HttpOnly,
``SameSite=Strict`` cookie (as Jupyter does) and redirects to the same page without the token,
so the token leaves the address bar and the history. The cookie holds a value derived from the
token (an HMAC), not the token itself. A request authenticated by the cookie that changes
something (not GET/HEAD) must also carry the ``X-BatchAPI-Request`` header, which a page of
another site cannot send without the service's consent (there is no CORS): no cross-site
request forgery even where ``SameSite`` is not enforced.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from dask_batchapi.errors import ServiceError

logger = logging.getLogger(__name__)

TOKEN_ENV = "DASK_BATCHAPI_TOKEN"
CSRF_HEADER = "x-batchapi-request"
#: Pages a browser opens by address: the only places ``?token=`` is accepted.
PAGES = frozenset({"/", "/_/job"})
_SAFE_METHODS = frozenset({"GET", "HEAD"})


def token_dir() -> Path:
    """The per-user private directory (0700) where a generated token is kept.

    Under ``$XDG_RUNTIME_DIR`` (else the temp dir): each level is checked to be a real directory
    of this user, so nobody can have planted it (or a link) there first to read the token."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    path = base / f"dask-batchapi-{os.getuid()}"
    for level in (path, path / "service"):
        level.mkdir(mode=0o700, exist_ok=True)
        info = level.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ServiceError(f"{level} is not a directory of this user; remove it and retry")
        level.chmod(0o700)
    return path / "service"


def resolve_token(token_file: str | None, port: int) -> tuple[str, Path | None]:
    """The token (env ``DASK_BATCHAPI_TOKEN``, else ``token_file``, else a new one) and, for a
    new one, the 0600 file it was written to. ServiceError for an unusable token file."""
    token = os.environ.pop(TOKEN_ENV, None)  # popped: the job drivers we start never see it
    if token is not None:
        return _checked(token, f"${TOKEN_ENV}"), None
    if token_file:
        return _read_token_file(Path(token_file)), None
    token = secrets.token_urlsafe(32)
    path = token_dir() / f"token-{port}"
    _write_private(path, token + "\n")
    return token, path


def _read_token_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as error:
        raise ServiceError(f"cannot read --token-file {str(path)!r}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ServiceError(
            f"--token-file {str(path)!r} is open to other users (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )
    return _checked(text.strip(), f"--token-file {str(path)!r}")


def _checked(token: str, where: str) -> str:
    if not token.strip() or any(c.isspace() for c in token.strip()):
        raise ServiceError(
            f"{where} must hold one token without spaces, got an empty or spaced one"
        )
    return token.strip()


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class TokenAuth:
    """ASGI middleware: a request without the right token gets 401 and never reaches the app.

    Parameters
    ----------
    app : ASGI app
    token : str
        The bearer token.
    cookie_name : str
        Per service (the port is in it): cookies do not tell ports apart.
    secure : bool
        Mark the cookie ``Secure`` (the service speaks TLS).
    """

    def __init__(self, app, token: str, cookie_name: str, secure: bool = False):
        self.app, self.token, self.cookie_name, self.secure = app, token, cookie_name, secure
        self._cookie_value = hmac.new(
            token.encode(), b"dashboard-cookie", hashlib.sha256
        ).hexdigest()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websocket routes: nothing else may pass unchecked
            await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope)
        response = self._check(request)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def _check(self, request: Request) -> Response | None:
        """None to let the request through, else the response that refuses (or logs in)."""
        if request.url.path in PAGES and "token" in request.query_params:
            return self._login(request)
        bearer = _bearer(request)
        if bearer is not None:
            return None if _same(bearer, self.token) else unauthorized(request)
        if not _same(request.cookies.get(self.cookie_name, ""), self._cookie_value):
            return unauthorized(request)
        if request.method not in _SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
            return _json(
                403,
                "Forbidden",
                f"a cookie-authenticated {request.method} needs "
                f"the {CSRF_HEADER} header (or use Authorization: Bearer)",
            )
        return None

    def _login(self, request: Request) -> Response:
        if not _same(request.query_params["token"], self.token):
            return unauthorized(request)
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            self.cookie_name,
            self._cookie_value,
            httponly=True,
            samesite="strict",
            secure=self.secure,
            path="/",
        )
        return response


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _json(status: int, kind: str, message: str, headers: dict | None = None) -> Response:
    return JSONResponse({"kind": kind, "message": message}, status_code=status, headers=headers)


_LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>dask-batchapi</title>
</head><body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>dask-batchapi</h1><p>This service needs its token. Open the address that
<code>dask-batchapi serve</code> printed (it ends in <code>?token=…</code>), or enter the token:</p>
<form method="get"><input name="token" type="password" size="40" autofocus>
<button type="submit">Open</button></form></body></html>"""


def unauthorized(request: Request) -> Response:
    """401: a login page for a browser opening a page, JSON for everything else."""
    headers = {"WWW-Authenticate": 'Bearer realm="dask-batchapi"'}
    if request.url.path in PAGES and "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(_LOGIN_PAGE, status_code=401, headers=headers)
    message = "missing or wrong token: send the header Authorization: Bearer <token>"
    return _json(401, "Unauthorized", message, headers)
