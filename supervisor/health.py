"""The health server on ``health_port``: /live, /ready, /health (JSON) and /metrics.

It only renders the ``AgentStatus`` the supervisor assembles; ``status_provider`` is called per
request, with a deadline, so a deadlocked supervisor makes /live fail instead of hang.

Components (the Datadog-style ``Healthy``/``Unhealthy`` lists of /health):

- ``supervisor``: Unhealthy when one of its loops stopped ticking or no config is loaded.
- ``elector`` (leader election on): Unhealthy when the API server has not answered for
  longer than ``ready_after_s`` (or never has): the replica can neither renew nor campaign.
- ``checkpoint`` (leader only): Unhealthy when the last token write failed.
- ``worker-<kind>``: on the leader, Unhealthy in ``backoff`` (crashed, waiting to restart)
  or while the worker reports ``healthy=false``; on a follower always Healthy (idle by design).
- ``config-reload``: Unhealthy when the last SIGHUP reload was rejected (old config in use).

Like the Datadog Agent's health endpoint, /health answers 500 when anything is Unhealthy, so
/health suits a readiness check and humans; the liveness probe is /live, which a crash-looping
worker does not fail (restarting the pod would drop the lease for nothing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import orjson
from loguru import logger
from prometheus_client.exposition import choose_encoder

from supervisor.metrics import metrics_registry
from supervisor.status import AgentStatus, WorkerStatus

__all__ = ["HealthServer", "StatusUnavailable", "components", "health_document",
           "start_health_server"]

STATUS_TIMEOUT_S = 0.5
"""The Datadog Agent's own deadline for its health status; well inside a probe's 1 s."""


_PATHS = ("/live", "/ready", "/health", "/metrics")


class StatusUnavailable(Exception):
    """The supervisor could not produce its status in time (or failed to)."""


def components(s: AgentStatus) -> dict[str, str]:
    """Component name → "" if healthy, else why not (rules in the module docstring)."""
    found: dict[str, str] = {}
    stuck = [f"{loop.name} silent {loop.tick_age_s:.1f}s (max {loop.max_age_s:.1f}s)"
             for loop in s.loops if loop.stuck]
    found["supervisor"] = "; ".join(stuck) or ("" if s.config_loaded else "no config loaded")
    if s.leader_election:
        if s.api_contact_age_s is None:
            found["elector"] = "API server never answered"
        elif s.api_contact_age_s > s.ready_after_s:
            found["elector"] = f"API server silent for {s.api_contact_age_s:.0f}s"
        else:
            found["elector"] = ""
    if s.is_leader:
        found["checkpoint"] = "last token write failed" if s.checkpoint_last_ok is False else ""
    for w in s.workers:
        found[f"worker-{w.kind}"] = _worker_problem(w) if s.is_leader else ""
    found["config-reload"] = ""
    if s.last_reload_ok is False:
        found["config-reload"] = f"reload rejected: {s.last_reload_error or 'invalid config'}"
    return found


def _worker_problem(w: WorkerStatus) -> str:
    if w.state == "backoff":
        why = w.last_exit_reason or "crashed"
        return f"restarting after {why} ({w.restarts} restarts)"
    if not w.healthy:
        return w.detail or "reports unhealthy"
    return ""


def health_document(s: AgentStatus) -> dict[str, Any]:
    """The /health JSON body."""
    found = components(s)
    return {
        "Healthy": sorted(name for name, why in found.items() if not why),
        "Unhealthy": sorted(name for name, why in found.items() if why),
        "problems": {name: why for name, why in sorted(found.items()) if why},
        "identity": s.identity,
        "version": s.version,
        "role": "leader" if s.is_leader else "follower",
        "leader_election": s.leader_election,
        "leader": s.holder,
        "lock": s.lock,
        "lease_age_s": _round(s.lease_age_s),
        "leader_transitions": s.leader_transitions,
        "renew_latency_s": _round(s.renew_latency_s),
        "api_contact_age_s": _round(s.api_contact_age_s),
        "live": s.live,
        "ready": s.ready,
        "workers": [_worker_document(w) for w in s.workers],
        "token": {"key": s.token, "timestamp": s.token_timestamp,
                  "persisted": s.token_persisted},
        "checkpoint": {"writes": s.checkpoint_writes, "failures": s.checkpoint_failures,
                       "last_ok": s.checkpoint_last_ok},
        "config": {"loaded": s.config_loaded, "last_reload_ok": s.last_reload_ok,
                   "last_reload_error": s.last_reload_error,
                   "last_reload_age_s": _round(s.last_reload_age_s)},
        "loops": [{"name": loop.name, "tick_age_s": _round(loop.tick_age_s),
                   "max_age_s": loop.max_age_s, "stuck": loop.stuck} for loop in s.loops],
        "election_requests": dict(sorted(s.election_requests.items())),
    }


def _worker_document(w: WorkerStatus) -> dict[str, Any]:
    return {
        "kind": w.kind, "state": w.state, "pid": w.pid, "restarts": w.restarts,
        "last_exit_code": w.last_exit_code, "last_exit_reason": w.last_exit_reason,
        "heartbeat_age_s": _round(w.heartbeat_age_s), "rss_bytes": w.rss_bytes,
        "cpu_percent": _round(w.cpu_percent), "healthy": w.healthy, "detail": w.detail,
        "stats": dict(sorted(w.stats.items())),
        "gauges": dict(sorted(w.gauges.items())),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class _StatusSource:
    """Calls the provider in a helper thread and waits at most ``timeout_s``.

    Requests arriving while a call is in flight wait on that same call, so a provider that
    never returns costs one stuck thread, not one per probe.
    """

    def __init__(self, provider: Callable[[], AgentStatus], timeout_s: float) -> None:
        self._provider = provider
        self._timeout_s = timeout_s
        self._mutex = threading.Lock()
        self._inflight: Future[AgentStatus] | None = None
        self._failing = False

    def __call__(self) -> AgentStatus:
        with self._mutex:
            future = self._inflight
            if future is None or future.done():
                future = self._inflight = Future()
                threading.Thread(target=self._run, args=(future,), name="health-status",
                                 daemon=True).start()
        try:
            status = future.result(timeout=self._timeout_s)
        except TimeoutError:
            self._note_failure(f"no status within {self._timeout_s:g}s", None)
            raise StatusUnavailable(
                f"status unavailable: supervisor did not answer within {self._timeout_s:g}s"
            ) from None
        except Exception as exc:
            self._note_failure(f"status provider raised {type(exc).__name__}", exc)
            raise StatusUnavailable(
                f"status unavailable: {type(exc).__name__}"
            ) from None
        if self._failing:
            self._failing = False
            logger.info("health: supervisor status available again")
        return status

    def _run(self, future: Future[AgentStatus]) -> None:
        try:
            future.set_result(self._provider())
        except BaseException as exc:
            future.set_exception(exc)

    def _note_failure(self, what: str, exc: BaseException | None) -> None:
        # Probes come every few seconds: log the first failure in full, repeats at debug.
        if self._failing:
            logger.debug("health: {}", what)
            return
        self._failing = True
        logger.opt(exception=exc).warning("health: {}", what)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "kube-event-agent"
    sys_version = ""
    timeout = 5.0
    """Socket timeout: a client that connects and says nothing cannot hold a thread."""

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        try:
            code, content_type, payload = self._route(urlsplit(self.path).path)
        except Exception as exc:  # a handler must never raise into the server
            logger.opt(exception=exc).warning("health: {} failed", urlsplit(self.path).path)
            code, content_type, payload = _json(500, {"error": "internal error"})
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/live":
            return self._live()
        if path == "/ready":
            return self._ready()
        if path == "/health":
            return self._health()
        if path == "/metrics":
            return self._metrics()
        return _json(404, {"error": "not found", "paths": list(_PATHS)})

    def _live(self) -> tuple[int, str, bytes]:
        try:
            s = self.server.status()
        except StatusUnavailable as exc:
            return _json(500, {"error": str(exc)})
        stuck = sorted(loop.name for loop in s.loops if loop.stuck)
        healthy = sorted(loop.name for loop in s.loops if not loop.stuck)
        return _json(200 if s.live else 500, {"Healthy": healthy, "Unhealthy": stuck})

    def _ready(self) -> tuple[int, str, bytes]:
        try:
            s = self.server.status()
        except StatusUnavailable as exc:
            return _json(503, {"error": str(exc)})
        found = {"config": s.config_loaded,
                 "apiserver": s.api_contact_age_s is not None
                 and s.api_contact_age_s <= s.ready_after_s}
        return _json(200 if s.ready else 503, {
            "Healthy": sorted(name for name, ok in found.items() if ok),
            "Unhealthy": sorted(name for name, ok in found.items() if not ok),
            "api_contact_age_s": _round(s.api_contact_age_s),
        })

    def _health(self) -> tuple[int, str, bytes]:
        try:
            document = health_document(self.server.status())
        except StatusUnavailable as exc:
            return _json(500, {"error": str(exc)})
        return _json(500 if document["Unhealthy"] else 200, document, indent=True)

    def _metrics(self) -> tuple[int, str, bytes]:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            return 200, content_type, encoder(self.server.registry)
        except StatusUnavailable as exc:
            return 500, "text/plain; charset=utf-8", f"{exc}\n".encode()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib echoes parts of a malformed request back; answer with the bare status.
        # (The message is not logged either: it can quote the request line.)
        logger.debug("health: rejected a request with {}", code)
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        _, content_type, payload = _json(code, {"error": phrase})
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # replaced by log_request: the stdlib line would include the query string

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Only our own paths are logged: anything else a client sends stays out of the log.
        path = urlsplit(getattr(self, "path", "") or "").path
        logger.debug("health: {} {} -> {}", self.command if path in _PATHS else "-",
                     path if path in _PATHS else "(other)", code)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 32

    def __init__(self, address: tuple[str, int], status: _StatusSource) -> None:
        super().__init__(address, _Handler)
        self.status = status
        self.registry = metrics_registry(status)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Resets and timeouts from probes are routine: not tracebacks on stderr.
        logger.opt(exception=True).debug("health: connection from {} failed", client_address)


class HealthServer:
    """Serves in a background thread; ``port=0`` binds an ephemeral port (see ``port``)."""

    def __init__(
        self,
        status_provider: Callable[[], AgentStatus],
        *,
        port: int,
        host: str = "0.0.0.0",
        status_timeout_s: float = STATUS_TIMEOUT_S,
    ) -> None:
        self._source = _StatusSource(status_provider, status_timeout_s)
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (meaningful after ``start``)."""
        return self._server.server_address[1] if self._server else self._address[1]

    def start(self) -> None:
        """Bind and serve in a daemon thread; raises OSError if the port is taken."""
        if self._server is not None:
            return
        self._server = _Server(self._address, self._source)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.25,),
                                        name="health-server", daemon=True)
        self._thread.start()
        logger.info("health server listening on {}:{}", self._address[0], self.port)

    def stop(self) -> None:
        """Stop accepting and close the socket (requests in flight finish on their own)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        logger.debug("health server stopped")


def start_health_server(
    port: int, status_provider: Callable[[], AgentStatus], *, host: str = "0.0.0.0",
) -> HealthServer | None:
    """The supervisor's entry point: None when ``health_port`` is 0 (disabled)."""
    if port == 0:
        logger.info("health server disabled (health_port: 0)")
        return None
    server = HealthServer(status_provider, port=port, host=host)
    server.start()
    return server


def _json(code: int, document: dict[str, Any], *, indent: bool = False) -> tuple[int, str, bytes]:
    option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
    if indent:
        option |= orjson.OPT_INDENT_2
    return code, "application/json", orjson.dumps(document, option=option)
