"""A real local Datadog intake for tests: an HTTP server on 127.0.0.1 in a background thread.

    from intake_server import LocalIntake

    with LocalIntake() as intake:                 # or LocalIntake(tls=trustme.CA())
        settings = IntakeSettings(api_key="k", dd_url=intake.url)
        ...
        intake.respond(503, 503)                  # the next two requests get 503, then 202
        intake.handler = lambda req: 413 if len(req.raw) > 10_000 else 202
        intake.down(); ...; intake.up()           # connection refused, then back, same port
        intake.wait_for(lambda: len(intake.events()) >= 10, timeout=10)
        assert intake.events()[0]["msg_title"].startswith("Events from the Pod")

Every request is recorded as a ``Request`` (method, path, headers with lower-case names,
raw body as sent, ``body`` decompressed (deflate/gzip) and JSON-parsed or None, status,
``at`` = ``time.monotonic()`` on arrival).
``events()`` / ``service_checks()`` return the Datadog events / service checks of requests
answered 2xx; ``requests()`` returns all. A status comes from the ``respond()`` queue, else
``handler(request)`` (an int, or (status, body) or (status, body, headers)), else 202.
All accessors are thread-safe.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import os
import ssl
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

__all__ = ["LocalIntake", "Request"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any
    status: int
    at: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    intake: LocalIntake


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Agent and our client use
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.intake._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.intake._track(self.connection, add=False)

    def do_POST(self) -> None:
        self.server.intake._serve(self)

    do_GET = do_PUT = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LocalIntake:
    """See the module docstring. ``url`` is ``http(s)://127.0.0.1:<port>``."""

    def __init__(self, *, tls: Any = None) -> None:
        self.handler: Callable[[Request], int | tuple[Any, ...]] | None = None
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._queue: collections.deque[int] = collections.deque()
        self._conns: set[Any] = set()
        self._ssl: ssl.SSLContext | None = None
        self.ca_file = ""
        if tls is not None:  # a trustme.CA: serve HTTPS with a cert for 127.0.0.1
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.issue_cert("127.0.0.1", "localhost").configure_cert(self._ssl)
            with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as f:
                f.write(tls.cert_pem.bytes())
            self.ca_file = f.name
        self.port = 0
        self._server: _Server | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> LocalIntake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.down()
        if self.ca_file:
            with contextlib.suppress(OSError):
                os.unlink(self.ca_file)

    # -- control -----------------------------------------------------------------------

    def respond(self, *statuses: int) -> None:
        """Queue statuses for the next requests (then ``handler``, then 202)."""
        with self._lock:
            self._queue.extend(statuses)

    def down(self) -> None:
        """Stop listening and cut open connections: clients get connection refused/reset."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(2)

    def up(self) -> None:
        """Listen (again, on the same port once it has one)."""
        if self._server is not None:
            return
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.intake = self
        if self._ssl is not None:
            server.socket = self._ssl.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def reset(self) -> None:
        """Forget recorded requests and queued statuses."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()

    # -- accessors -----------------------------------------------------------------------

    def requests(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def events(self) -> list[dict[str, Any]]:
        """Datadog events of every 2xx ``/intake/`` request, in arrival order."""
        out: list[dict[str, Any]] = []
        for r in self.requests("/intake/"):
            if 200 <= r.status < 300 and isinstance(r.body, dict):
                for group in (r.body.get("events") or {}).values():
                    out.extend(group)
        return out

    def service_checks(self) -> list[dict[str, Any]]:
        """Service checks of every 2xx ``/api/v1/check_run`` request."""
        out: list[dict[str, Any]] = []
        for r in self.requests("/api/v1/check_run"):
            if 200 <= r.status < 300 and isinstance(r.body, list):
                out.extend(r.body)
        return out

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll ``predicate`` until it returns something truthy (returned); else TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"intake: condition not met in {timeout} s "
                                   f"({len(self.requests())} requests recorded)")
            time.sleep(0.02)

    # -- server side -----------------------------------------------------------------------

    def _track(self, conn: Any, *, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _serve(self, h: _Handler) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in h.headers.items()}
        at = time.monotonic()
        request = Request(h.command, h.path, headers, raw, _parse(raw, headers), 0, at)
        with self._lock:
            queued = self._queue.popleft() if self._queue else None
        answer: int | tuple[Any, ...] = 202
        if queued is not None:
            answer = queued
        elif self.handler is not None:
            try:
                answer = self.handler(request)
            except Exception as exc:  # a broken test handler answers 500, visibly
                answer = (500, f"test intake handler failed: {exc!r}".encode())
        answer = answer if isinstance(answer, tuple) else (answer,)
        status = answer[0]
        body = answer[1] if len(answer) > 1 else b""
        extra = answer[2] if len(answer) > 2 else {}
        body = body or (b'{"status":"ok"}' if status < 300 else b'{"errors":["test intake"]}')
        with self._lock:
            self._requests.append(Request(**{**request.__dict__, "status": status}))
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)


def _parse(raw: bytes, headers: dict[str, str]) -> Any:
    encoding = headers.get("content-encoding", "")
    try:
        if encoding == "deflate":
            raw = zlib.decompress(raw)
        elif encoding == "gzip":
            raw = gzip.decompress(raw)
        return orjson.loads(raw)
    except (zlib.error, OSError, orjson.JSONDecodeError):
        return None
