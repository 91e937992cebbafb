"""The admin API under ``/_kubesim/`` (admin token only) and the operations behind it.

Each HTTP route maps to one ``Admin`` method, and ``kubesim.runner.KubeSim`` exposes the
same methods in Python:

    GET    /_kubesim/info                      info()
    GET    /_kubesim/counts                    counts()
    DELETE /_kubesim/counts                    reset_counts()
    GET    /_kubesim/faults                    faults()
    POST   /_kubesim/faults        {spec}      inject_fault(**spec) -> {"id": ...}
    DELETE /_kubesim/faults                    clear_faults()
    DELETE /_kubesim/faults/{id}               remove_fault(id)
    POST   /_kubesim/pause   {seconds, mode}   pause(seconds, mode)
    POST   /_kubesim/compact                   compact() -> {"resourceVersion": ...}
    GET    /_kubesim/componentstatuses         component_health()
    PUT    /_kubesim/componentstatuses/{name}  set_component_health(name, healthy, message)
    POST   /_kubesim/tokens  {namespace, serviceAccount}   issue_token() -> {"token": ...}
    POST   /_kubesim/outage  {seconds}         outage(seconds): stop listening, then resume
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from aiohttp import web

from kubesim import errors
from kubesim.bodies import json_response
from kubesim.cluster import Cluster, ComponentHealth
from kubesim.faults import FaultSpec
from kubesim.resources import find
from kubesim.store import object_key

__all__ = ["ADMIN_PREFIX", "Admin", "handle_admin"]

ADMIN_PREFIX = "/_kubesim/"


class Admin:
    """Admin operations; call them on the server's event loop."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def info(self) -> dict[str, Any]:
        c = self.cluster
        return {"resourceVersion": str(c.store.rv), "features": c.features,
                "watches": len(c.watches), "paused": c.faults.paused(),
                "history": c.config.history, "eventTTL": c.config.event_ttl}

    def counts(self) -> dict[str, Any]:
        return self.cluster.counter.snapshot()

    def reset_counts(self) -> None:
        self.cluster.counter.reset()

    def faults(self) -> list[dict[str, Any]]:
        return self.cluster.faults.list()

    def inject_fault(self, **spec: Any) -> str:
        """Add a fault rule (see kubesim.faults.FaultSpec); returns its id."""
        fault = self.cluster.faults.add(FaultSpec.from_dict(spec))
        if fault.spec.drop_watches and not fault.spec.drop_after:
            rate = fault.spec.rate
            rng = self.cluster.faults
            self.cluster.drop_watches(
                lambda w: fault.matches(w.info, w.user) and rng.sample() < rate)
        return fault.id

    def remove_fault(self, fault_id: str) -> bool:
        return self.cluster.faults.remove(fault_id)

    def clear_faults(self) -> None:
        self.cluster.faults.clear()

    def pause(self, seconds: float, mode: str = "error") -> None:
        """Make the API unavailable for ``seconds``: "error" answers 503, "hang" stalls
        requests until the pause ends, "drop" cuts connections. Open watches are cut."""
        self.cluster.faults.pause(float(seconds), mode)
        if seconds > 0:
            self.cluster.drop_watches(lambda w: True)

    def compact(self) -> int:
        return self.cluster.store.compact()

    def component_health(self) -> dict[str, dict[str, Any]]:
        return {n: {"healthy": h.healthy, "message": h.message}
                for n, h in sorted(self.cluster.components.items())}

    def set_component_health(self, name: str, healthy: bool, message: str = "") -> None:
        if not name:
            raise ValueError("component name must not be empty")
        self.cluster.components[name] = ComponentHealth(bool(healthy), str(message))

    def issue_token(self, namespace: str, service_account: str) -> str:
        """A token for ``system:serviceaccount:<namespace>:<service_account>``.

        The ServiceAccount is created if missing (the namespace must exist)."""
        store = self.cluster.store
        if store.get("namespaces", namespace) is None:
            raise KeyError(f'namespaces "{namespace}" not found')
        if store.get("serviceaccounts", object_key(namespace, service_account)) is None:
            self.cluster.create_object(find("serviceaccounts"),
                                       {"metadata": {"name": service_account}}, namespace)
        token, _ = self.cluster.auth.issue(namespace, service_account)
        return token

    async def outage(self, seconds: float) -> None:
        if self.cluster.on_outage is None:
            raise RuntimeError("this server cannot stop listening")
        await self.cluster.on_outage(float(seconds))


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"admin API: body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise errors.bad_request("admin API: body must be a JSON object")
    return data


def _require(data: dict[str, Any], key: str) -> Any:
    if key not in data:
        raise errors.bad_request(f"admin API: missing key {key!r}")
    return data[key]


async def _route(admin: Admin, request: web.Request, parts: list[str]) -> Any:
    method = request.method
    head = parts[0] if parts else ""
    if head == "info" and method == "GET":
        return admin.info()
    if head == "counts":
        if method == "GET":
            return admin.counts()
        if method == "DELETE":
            admin.reset_counts()
            return {}
    if head == "faults":
        if method == "GET" and len(parts) == 1:
            return admin.faults()
        if method == "POST" and len(parts) == 1:
            return {"id": admin.inject_fault(**await _json(request))}
        if method == "DELETE" and len(parts) == 1:
            admin.clear_faults()
            return {}
        if method == "DELETE" and len(parts) == 2:
            if not admin.remove_fault(parts[1]):
                raise errors.ApiError(404, "NotFound", f"no fault {parts[1]!r}")
            return {}
    if head == "pause" and method == "POST":
        data = await _json(request)
        admin.pause(float(_require(data, "seconds")), str(data.get("mode", "error")))
        return {}
    if head == "compact" and method == "POST":
        return {"resourceVersion": str(admin.compact())}
    if head == "componentstatuses":
        if method == "GET" and len(parts) == 1:
            return admin.component_health()
        if method == "PUT" and len(parts) == 2:
            data = await _json(request)
            admin.set_component_health(parts[1], bool(_require(data, "healthy")),
                                       str(data.get("message", "")))
            return {}
    if head == "tokens" and method == "POST":
        data = await _json(request)
        return {"token": admin.issue_token(str(_require(data, "namespace")),
                                           str(_require(data, "serviceAccount")))}
    if head == "outage" and method == "POST":
        data = await _json(request)
        await admin.outage(float(_require(data, "seconds")))
        return {}
    raise errors.ApiError(404, "NotFound", f"admin API: no route {method} {request.path}")


async def handle_admin(request: web.Request, admin: Admin) -> web.Response:
    cluster = admin.cluster
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(),
                                                             cluster.config.admin_token):
        user = cluster.auth.authenticate(header)
        if user is None or user.name == "system:anonymous":
            raise errors.unauthorized()
        raise errors.forbidden(f'forbidden: User "{user.name}" cannot use the kubesim admin API')
    parts = [p for p in request.path[len(ADMIN_PREFIX):].split("/") if p]
    try:
        result = await _route(admin, request, parts)
    except (ValueError, KeyError, TypeError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        raise errors.bad_request(f"admin API: {message}") from None
    return json_response(result if result is not None else {})
