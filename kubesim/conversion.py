"""events.k8s.io/v1 <-> core/v1 Event conversion, as the real server does it on the fly.

Both APIs read and write one store (core/v1 form): a core event's ``message`` is the
events.k8s.io ``note``, ``involvedObject`` is ``regarding``, ``count`` is ``deprecatedCount``
(or ``series.count``), and so on (pkg/apis/events/v1/conversion.go).
"""

from __future__ import annotations

from typing import Any

__all__ = ["core_to_events_v1", "events_v1_to_core"]

# (core/v1 field, events.k8s.io/v1 field) for the events.k8s.io -> core direction
_RENAMES = (
    ("message", "note"),
    ("involvedObject", "regarding"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
)
_SAME = ("metadata", "eventTime", "series", "reportingInstance", "action", "reason", "related",
         "type")


def core_to_events_v1(obj: dict[str, Any]) -> dict[str, Any]:
    """Field order and empty-value rules of the Go struct's JSON encoding."""
    out: dict[str, Any] = {"kind": "Event", "apiVersion": "events.k8s.io/v1"}
    out["metadata"] = obj.get("metadata", {})
    out["eventTime"] = obj.get("eventTime")
    for core, v1 in (("series", "series"), ("reportingComponent", "reportingController"),
                     ("reportingInstance", "reportingInstance"), ("action", "action"),
                     ("reason", "reason")):
        if obj.get(core):
            out[v1] = obj[core]
    out["regarding"] = obj.get("involvedObject") or {}
    for core, v1 in (("related", "related"), ("message", "note"), ("type", "type")):
        if obj.get(core):
            out[v1] = obj[core]
    out["deprecatedSource"] = obj.get("source") or {}
    out["deprecatedFirstTimestamp"] = obj.get("firstTimestamp")
    out["deprecatedLastTimestamp"] = obj.get("lastTimestamp")
    if obj.get("count"):
        out["deprecatedCount"] = obj["count"]
    return out


def events_v1_to_core(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Event", "apiVersion": "v1"}
    for field in _SAME:
        if field in obj:
            out[field] = obj[field]
    for core, v1 in _RENAMES:
        if v1 in obj:
            out[core] = obj[v1]
    out.setdefault("involvedObject", {})
    return out
