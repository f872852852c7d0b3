"""Serving a local web app safely: loopback by default, a random token on every request, a printed URL.

The token travels in the URL (`?token=…`, as Jupyter) or the `X-Medfake-Token` header; a request without it
gets 403 before any route runs. Static files come from a fixed list inside the package, so no request
parameter ever reaches the file system.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from importlib import resources

from medfake.errors import MedfakeError

TOKEN_HEADER = "x-medfake-token"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765

STATIC = {"common.js": "text/javascript", "viewer.js": "text/javascript", "reader.js": "text/javascript",
          "style.css": "text/css"}
PAGES = ("viewer.html", "reader.html")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> str | None:
    """None for a loopback address; a warning for another one when allowed; else refuse."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise MedfakeError(f"refusing to listen on {host}: the server reads scans and writes files, so it binds "
                           "127.0.0.1 unless you pass --allow-remote")
    return (f"warning: listening on {host}: anyone who can reach this address and sees the URL's token can read "
            "these scans (and write into the output folder)")


def package_text(name: str) -> str:
    return (resources.files("medfake.viewer") / "static" / name).read_text(encoding="utf-8")


def add_security(app, token: str) -> None:
    """403 for any request without the token; responses are not cached and send no referrer (the URL holds
    the token)."""
    from starlette.responses import PlainTextResponse

    expected = token.encode()

    @app.middleware("http")
    async def require_token(request, call_next):
        given = request.query_params.get("token") or request.headers.get(TOKEN_HEADER, "")
        if not secrets.compare_digest(given.encode(), expected):
            return PlainTextResponse("forbidden: missing or wrong token", status_code=403)
        response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def add_static(app, page: str, token: str) -> None:
    """`/` → the page with the token filled in; `/static/NAME` → one of STATIC, nothing else."""
    from starlette.responses import HTMLResponse, PlainTextResponse, Response

    html = package_text(page).replace("__TOKEN__", json.dumps(token)[1:-1])
    files = {name: (package_text(name), kind) for name, kind in STATIC.items()}

    @app.get("/", include_in_schema=False)
    def index():
        return HTMLResponse(html)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        if name not in files:
            return PlainTextResponse("not found", status_code=404)
        text, kind = files[name]
        return Response(text, media_type=kind)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MedfakeError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, token: str) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/?token={token}"


def _server(app, sock):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config), sock


def serve_forever(app, host: str, port: int, token: str, echo=print) -> None:
    """Bind, print the URL with its token, serve until Ctrl-C."""
    sock = bind(host, port)
    echo(f"open {url_of(sock, token)}  (Ctrl-C stops the server)")
    server, _ = _server(app, sock)
    server.run(sockets=[sock])


class BackgroundServer:
    """The app served from a thread (tests, benchmarks): `with BackgroundServer(app, token) as s: s.url`."""

    def __init__(self, app, token: str, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        self.url = url_of(self.sock, token)
        self.base = self.url.split("?")[0]
        self.token = token
        self.server, _ = _server(app, self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
