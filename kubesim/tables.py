"""``meta.k8s.io/v1 Table`` answers for ``kubectl get`` (the server-side printers' columns)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from kubesim.resources import Resource

__all__ = ["human_duration", "table", "wants_table"]

_NAME_COL = {"name": "Name", "type": "string", "format": "name", "priority": 0,
             "description": "Name must be unique within a namespace. Is required when creating "
             "resources, although some resources may allow a client to request the generation "
             "of an appropriate name automatically."}
_AGE_COL = {"name": "Age", "type": "string", "format": "", "priority": 0,
            "description": "CreationTimestamp is a timestamp representing the server time when "
            "this object was created."}


def _col(name: str, priority: int = 0, type_: str = "string") -> dict[str, Any]:
    return {"name": name, "type": type_, "format": "", "description": name, "priority": priority}


def wants_table(accept: str) -> bool:
    return "as=Table" in accept and "g=meta.k8s.io" in accept


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _since(ts: str | None, now: datetime) -> str:
    if not ts:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_duration((now - then).total_seconds())


def _age(obj: dict[str, Any], now: datetime) -> str:
    return _since(obj["metadata"].get("creationTimestamp"), now)


def _event_row(obj: dict[str, Any], now: datetime) -> list[Any]:
    inv = obj.get("involvedObject") or {}
    last = obj.get("lastTimestamp") or obj.get("eventTime") or obj["metadata"].get(
        "creationTimestamp")
    first = obj.get("firstTimestamp") or obj.get("eventTime")
    source = (obj.get("source") or {}).get("component") or obj.get("reportingComponent") or ""
    host = (obj.get("source") or {}).get("host")
    if host:
        source = f"{source}, {host}"
    count = obj.get("count") or (obj.get("series") or {}).get("count") or 1
    return [
        _since(last, now), obj.get("type", ""), obj.get("reason", ""),
        f"{(inv.get('kind') or '').lower()}/{inv.get('name', '')}", inv.get("fieldPath", ""),
        source, (obj.get("message") or "").strip(), _since(first, now), count,
        obj["metadata"]["name"],
    ]


def _subjects(obj: dict[str, Any], kind: str) -> str:
    names = []
    for s in obj.get("subjects") or []:
        if s.get("kind") == kind:
            names.append(f"{s.get('namespace', '')}/{s['name']}" if kind == "ServiceAccount"
                         else s.get("name", ""))
    return ", ".join(names)


def _component_row(obj: dict[str, Any], now: datetime) -> list[Any]:
    cond = next(iter(obj.get("conditions") or []), {})
    status = "Healthy" if cond.get("status") == "True" else "Unhealthy"
    if cond.get("status") not in ("True", "False"):
        status = "Unknown"
    return [obj["metadata"]["name"], status, cond.get("message", ""), cond.get("error", "")]


_Row = Callable[[dict[str, Any], datetime], list[Any]]
_PRINTERS: dict[str, tuple[list[dict[str, Any]], _Row]] = {
    "Namespace": ([_NAME_COL, _col("Status"), _AGE_COL],
                  lambda o, n: [o["metadata"]["name"], (o.get("status") or {}).get("phase", ""),
                                _age(o, n)]),
    "ConfigMap": ([_NAME_COL, _col("Data", type_="integer"), _AGE_COL],
                  lambda o, n: [o["metadata"]["name"],
                                len(o.get("data") or {}) + len(o.get("binaryData") or {}),
                                _age(o, n)]),
    "Secret": ([_NAME_COL, _col("Type"), _col("Data", type_="integer"), _AGE_COL],
               lambda o, n: [o["metadata"]["name"], o.get("type", ""), len(o.get("data") or {}),
                             _age(o, n)]),
    "ServiceAccount": ([_NAME_COL, _col("Secrets", type_="integer"), _AGE_COL],
                       lambda o, n: [o["metadata"]["name"], len(o.get("secrets") or []),
                                     _age(o, n)]),
    "Endpoints": ([_NAME_COL, _col("Endpoints"), _AGE_COL],
                  lambda o, n: [o["metadata"]["name"], _endpoints(o), _age(o, n)]),
    "Event": ([_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"),
               _col("Subobject", 1), _col("Source", 1), _col("Message"), _col("First Seen", 1),
               _col("Count", 1, "integer"), _col("Name", 1)], _event_row),
    "ComponentStatus": ([_NAME_COL, _col("Status"), _col("Message"), _col("Error")],
                        _component_row),
    "Lease": ([_NAME_COL, _col("Holder"), _AGE_COL],
              lambda o, n: [o["metadata"]["name"],
                            (o.get("spec") or {}).get("holderIdentity", ""), _age(o, n)]),
    "Role": ([_NAME_COL, _col("Created At", type_="date")],
             lambda o, n: [o["metadata"]["name"], o["metadata"].get("creationTimestamp")]),
    "ClusterRole": ([_NAME_COL, _col("Created At", type_="date")],
                    lambda o, n: [o["metadata"]["name"], o["metadata"].get("creationTimestamp")]),
}
for _kind in ("RoleBinding", "ClusterRoleBinding"):
    _PRINTERS[_kind] = (
        [_NAME_COL, _col("Role"), _AGE_COL, _col("Users", 1), _col("Groups", 1),
         _col("ServiceAccounts", 1)],
        lambda o, n: [o["metadata"]["name"],
                      f"{(o.get('roleRef') or {}).get('kind', '')}/"
                      f"{(o.get('roleRef') or {}).get('name', '')}",
                      _age(o, n), _subjects(o, "User"), _subjects(o, "Group"),
                      _subjects(o, "ServiceAccount")],
    )


def _endpoints(obj: dict[str, Any]) -> str:
    out = []
    for subset in obj.get("subsets") or []:
        ports = subset.get("ports") or [{}]
        for addr in subset.get("addresses") or []:
            for port in ports:
                ip = addr.get("ip", "")
                out.append(f"{ip}:{port['port']}" if "port" in port else ip)
    if not out:
        return "<none>"
    text = ",".join(out[:3])
    return text + (f" + {len(out) - 3} more..." if len(out) > 3 else "")


def table(
    resource: Resource,
    objects: Iterable[dict[str, Any]],
    list_meta: dict[str, Any],
    include_object: str = "Metadata",
) -> dict[str, Any]:
    """A Table of ``objects`` (core/v1 form) with rows carrying the object as asked."""
    columns, row = _PRINTERS[resource.kind]
    now = datetime.now(UTC)
    rows = []
    for obj in objects:
        entry: dict[str, Any] = {"cells": row(obj, now)}
        if include_object == "Object":
            entry["object"] = obj
        elif include_object != "None":
            entry["object"] = {"kind": "PartialObjectMetadata",
                               "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        rows.append(entry)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "columnDefinitions": columns, "rows": rows}
