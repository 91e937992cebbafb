"""componentstatuses (read-only, deprecated in the real server): health set by the admin."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kubesim import errors
from kubesim.bodies import json_response
from kubesim.cluster import Cluster
from kubesim.requestinfo import RequestInfo
from kubesim.resources import find
from kubesim.tables import table, wants_table

__all__ = ["component_status", "component_statuses"]

_DEPRECATED_CS = '299 - "v1 ComponentStatus is deprecated in v1.19+"'


def component_status(name: str, healthy: bool, message: str) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": "Healthy", "status": "True" if healthy else "False"}
    if healthy:
        cond["message"] = message or ('{"health":"true","reason":""}' if name.startswith("etcd")
                                      else "ok")
    else:
        cond["message"] = ""
        cond["error"] = message or "connection refused"
    return {"kind": "ComponentStatus", "apiVersion": "v1",
            "metadata": {"name": name, "creationTimestamp": None}, "conditions": [cond]}


def component_statuses(request: web.Request, cluster: Cluster, info: RequestInfo) -> web.Response:
    headers = {"Warning": _DEPRECATED_CS}
    items = [component_status(n, h.healthy, h.message)
             for n, h in sorted(cluster.components.items())]
    resource = find("componentstatuses")
    if info.name:
        found = [i for i in items if i["metadata"]["name"] == info.name]
        if not found:
            raise errors.not_found("componentstatuses", "", info.name)
        items = found
    accept = request.headers.get("Accept", "")
    if wants_table(accept):
        return json_response(table(resource, items, {}, request.query.get(
            "includeObject", "Metadata")), headers=headers)
    if info.name:
        return json_response(items[0], headers=headers)
    return json_response({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {},
                          "items": items}, headers=headers)
