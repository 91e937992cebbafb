"""The aiohttp application: authentication, counting, faults, authorization, dispatch.

Every request goes the real server's way: authenticate (401) -> resolve RequestInfo ->
count -> (pause / injected faults) -> authorize (403) -> handler. Errors are Status bodies.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiohttp import web
from loguru import logger

from kubesim import discovery, errors, openapi
from kubesim.admin import ADMIN_PREFIX, Admin, handle_admin
from kubesim.bodies import json_response
from kubesim.cluster import USER_KEY, Cluster, ServerConfig
from kubesim.counting import resource_label
from kubesim.handlers import handle_resource
from kubesim.health import health_response, is_health_path
from kubesim.requestinfo import RequestInfo, parse_request_info

__all__ = ["ApiServer"]

_MAX_BODY = 3 * 1024 * 1024 + 512 * 1024  # the real server's request size limit (3 MiB)


class ApiServer:
    """One emulated kube-apiserver on 127.0.0.1; start/stop on the loop it runs in."""

    def __init__(self, config: ServerConfig, ssl_context: ssl.SSLContext | None = None,
                 ca_pem: str = "") -> None:
        self.config = config
        self.cluster = Cluster(config, ca_pem)
        self.admin = Admin(self.cluster)
        self.cluster.on_outage = self._outage
        self._ssl = ssl_context
        self.app = web.Application(client_max_size=_MAX_BODY)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = config.port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self.config.host}:{self.port}"

    async def start(self) -> None:
        self.cluster.store.bind_loop(asyncio.get_running_loop())
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                     handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await self.resume_listening()
        self._spawn(self.cluster.expire_events_forever())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume_listening(self) -> None:
        if self._site is not None:
            return
        assert self._runner is not None
        site = web.TCPSite(self._runner, self.config.host, self.port, ssl_context=self._ssl,
                           reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        assert server.sockets
        self.port = server.sockets[0].getsockname()[1]
        self._site = site

    async def stop_listening(self) -> None:
        """Close the port and every connection (watches too): clients see a down server."""
        if self._site is None:
            return
        site, self._site = self._site, None
        await site.stop()
        assert self._runner is not None
        assert self._runner.server is not None
        for conn in list(self._runner.server.connections):
            conn.force_close()
        self.cluster.drop_watches(lambda w: True)

    async def _outage(self, seconds: float) -> None:
        async def run() -> None:
            await asyncio.sleep(0.1)  # let the admin answer leave first
            await self.stop_listening()
            await asyncio.sleep(seconds)
            await self.resume_listening()

        self._spawn(run())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.stop_listening()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- request pipeline -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            if request.path.startswith(ADMIN_PREFIX):
                return await handle_admin(request, self.admin)
            return await self._serve(request)
        except errors.ApiError as exc:
            return json_response(exc.body(), exc.code, exc.headers)
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Exception as exc:
            logger.exception("kubesim: unhandled error on {} {}", request.method, request.path)
            err = errors.internal_error(f"{type(exc).__name__}: {exc}")
            return json_response(err.body(), err.code)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        cluster = self.cluster
        query = request.query
        info = parse_request_info(request.method, request.path, {
            "watch": query.getall("watch", []), "fieldSelector": query.getall("fieldSelector", [])
        })
        user = cluster.auth.authenticate(request.headers.get("Authorization"))
        agent = request.headers.get("User-Agent", "")
        cluster.counter.add(user.name if user else "", agent, info.verb, resource_label(info))
        if user is None:
            raise errors.unauthorized()
        request[USER_KEY] = user
        await self._faults(request, info, user.name)
        allowed, reason = cluster.authorize(user, info)
        if not allowed:
            message = cluster.forbidden_message(user, info, reason)
            if info.is_resource_request:
                raise errors.forbidden(message, info.resource, info.api_group, info.name)
            raise errors.forbidden(message)
        if info.is_resource_request:
            return await handle_resource(request, cluster, info)
        return self._non_resource(request, info)

    async def _faults(self, request: web.Request, info: RequestInfo, user: str) -> None:
        faults = self.cluster.faults
        paused = faults.paused()
        if paused:
            if faults.pause_mode == "hang":
                await asyncio.sleep(paused)
            elif faults.pause_mode == "drop":
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            else:
                raise errors.service_unavailable("kubesim: the API server is paused")
        fired = faults.fire(info, user)
        if not fired:
            return
        latency = sum(f.spec.latency for f in fired)
        if latency:
            await asyncio.sleep(latency)
        failing = next((f for f in fired if f.spec.status), None)
        if failing is not None and failing.spec.status is not None:
            raise errors.status_for_code(failing.spec.status, failing.spec.message)

    def _non_resource(self, request: web.Request, info: RequestInfo) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            raise errors.method_not_supported()
        path = request.path.rstrip("/") or "/"
        accept = request.headers.get("Accept", "")
        if path == "/version":
            return json_response(discovery.version_info())
        if is_health_path(path):
            return health_response(request, self.cluster)
        if path in ("/api", "/apis"):
            media = discovery.negotiate_aggregated(accept)
            if media is not None:
                doc = discovery.aggregated(path == "/api", media.split("v=")[1].split(";")[0])
                return web.Response(body=json_response(doc).body, content_type=None,
                                    headers={"Content-Type": media, "Vary": "Accept"})
            if path == "/api":
                return json_response(discovery.api_versions(f"{self.config.host}:{self.port}"))
            return json_response(discovery.api_group_list())
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2:
            doc = discovery.api_resource_list("", parts[1])
        elif parts[0] == "apis" and len(parts) == 3:
            doc = discovery.api_resource_list(parts[1], parts[2])
        elif parts[0] == "apis" and len(parts) == 2:
            groups = [g for g in discovery.api_group_list()["groups"] if g["name"] == parts[1]]
            doc = {"kind": "APIGroup", "apiVersion": "v1", **groups[0]} if groups else None
        elif path == "/openapi/v3":
            doc = openapi.root_document()
        elif path.startswith("/openapi/v3/"):
            doc = openapi.gv_document(path[len("/openapi/v3/"):])
        else:
            doc = None
        if doc is None:
            raise errors.path_not_found()
        return json_response(doc)
