"""Per-kind strategies: defaults and system fields on create/update, unknown-field pruning.

Mirrors k8s.io/apiserver's ``rest.BeforeCreate`` / ``BeforeUpdate`` and the kinds'
``PrepareForCreate`` / ``PrepareForUpdate``: what the server owns (uid,
creationTimestamp, namespace status) is never taken from the client.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from kubesim.errors import bad_request
from kubesim.resources import Resource

__all__ = [
    "canonical_event",
    "generate_name",
    "now_rfc3339",
    "prepare_create",
    "prepare_update",
    "prune_unknown",
]

_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
})
_CORE_EVENT_FIELDS = frozenset({
    "involvedObject", "reason", "message", "source", "firstTimestamp", "lastTimestamp", "count",
    "type", "eventTime", "series", "action", "related", "reportingComponent", "reportingInstance",
})
_EVENTS_V1_FIELDS = frozenset({
    "eventTime", "series", "reportingController", "reportingInstance", "action", "reason",
    "regarding", "related", "note", "type", "deprecatedSource", "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp", "deprecatedCount",
})
_TOP_FIELDS: dict[str, frozenset[str]] = {
    "Namespace": frozenset({"spec", "status"}),
    "ConfigMap": frozenset({"data", "binaryData", "immutable"}),
    "Endpoints": frozenset({"subsets"}),
    "ServiceAccount": frozenset({"secrets", "imagePullSecrets", "automountServiceAccountToken"}),
    "Secret": frozenset({"data", "stringData", "type", "immutable"}),
    "Lease": frozenset({"spec"}),
    "Role": frozenset({"rules"}),
    "ClusterRole": frozenset({"rules", "aggregationRule"}),
    "RoleBinding": frozenset({"subjects", "roleRef"}),
    "ClusterRoleBinding": frozenset({"subjects", "roleRef"}),
}
_SPEC_FIELDS: dict[str, frozenset[str]] = {
    "Lease": frozenset({"holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime",
                        "leaseTransitions", "strategy", "preferredHolder"}),
    "Namespace": frozenset({"finalizers"}),
}
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_name(prefix: str) -> str:
    """names.SimpleNameGenerator: the prefix (cut to fit 63) plus five random characters."""
    return prefix[: 63 - 5] + "".join(secrets.choice(_NAME_CHARS) for _ in range(5))


def prune_unknown(resource: Resource, obj: dict[str, Any]) -> list[str]:
    """Drop fields the kind does not have (the real decoder drops them); return their paths."""
    if resource.kind == "Event":
        known = _EVENTS_V1_FIELDS if resource.group == "events.k8s.io" else _CORE_EVENT_FIELDS
    else:
        known = _TOP_FIELDS.get(resource.kind, frozenset())
    unknown: list[str] = []
    for key in list(obj):
        if key not in known and key not in ("apiVersion", "kind", "metadata"):
            unknown.append(key)
            del obj[key]
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in list(meta):
            if key not in _META_FIELDS:
                unknown.append(f"metadata.{key}")
                del meta[key]
    spec_known = _SPEC_FIELDS.get(resource.kind)
    spec = obj.get("spec")
    if spec_known is not None and isinstance(spec, dict):
        for key in list(spec):
            if key not in spec_known:
                unknown.append(f"spec.{key}")
                del spec[key]
    return unknown


def _check_shape(resource: Resource, obj: Any) -> None:
    if not isinstance(obj, dict):
        raise bad_request(f"the object provided is unrecognized (must be of type {resource.kind})")
    meta = obj.setdefault("metadata", {})
    if meta is None:
        obj["metadata"] = {}
    elif not isinstance(meta, dict):
        raise bad_request("metadata: expected an object")


def _merge_string_data(obj: dict[str, Any]) -> None:
    data = obj.get("data") or {}
    for key, value in data.items():
        try:
            base64.b64decode(value or "", validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise bad_request(
                f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data '
                f"in data[{key}]: {exc}"
            ) from None
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = dict(data)
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


# (path, micro?): metav1.Time fields serialise to whole seconds, MicroTime to microseconds.
_TIME_FIELDS: dict[str, tuple[tuple[tuple[str, ...], bool], ...]] = {
    "Event": ((("firstTimestamp",), False), (("lastTimestamp",), False),
              (("eventTime",), True), (("series", "lastObservedTime"), True)),
    "Lease": ((("spec", "acquireTime"), True), (("spec", "renewTime"), True)),
}


def _format_time(path: str, value: Any, micro: bool) -> str:
    try:
        parsed = datetime.fromisoformat(str(value).replace("z", "Z"))
    except ValueError:
        raise bad_request(
            f'{path}: parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot parse'
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def normalize_times(kind: str, obj: dict[str, Any]) -> None:
    """Re-encode timestamps as the real server does (UTC; seconds or microseconds)."""
    for path, micro in _TIME_FIELDS.get(kind, ()):
        parent: Any = obj
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and parent.get(path[-1]) not in (None, ""):
            parent[path[-1]] = _format_time(".".join(path), parent[path[-1]], micro)


def canonical_event(obj: dict[str, Any]) -> None:
    """Fill the keys Go's encoder always writes for a core/v1 Event."""
    obj.setdefault("involvedObject", {})
    obj.setdefault("source", {})
    obj.setdefault("firstTimestamp", None)
    obj.setdefault("lastTimestamp", None)
    obj.setdefault("eventTime", None)
    obj.setdefault("reportingComponent", "")
    obj.setdefault("reportingInstance", "")


def _defaults(resource: Resource, obj: dict[str, Any]) -> None:
    kind = resource.kind
    if kind == "Namespace":
        meta = obj["metadata"]
        meta.setdefault("labels", {})
        meta["labels"] = dict(meta["labels"] or {})
        if meta.get("name"):
            meta["labels"]["kubernetes.io/metadata.name"] = meta["name"]
    elif kind == "Secret":
        obj.setdefault("type", "Opaque")
        if not obj["type"]:
            obj["type"] = "Opaque"
        _merge_string_data(obj)
    elif kind == "Event":
        canonical_event(obj)
    normalize_times(kind, obj)


def prepare_create(resource: Resource, obj: Any, namespace: str) -> dict[str, Any]:
    """System fields for a new object; ``obj`` (a fresh dict) is modified and returned."""
    _check_shape(resource, obj)
    meta = obj["metadata"]
    if resource.namespaced:
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = generate_name(meta["generateName"])
    for field in ("resourceVersion", "selfLink", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generation"):
        meta.pop(field, None)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now_rfc3339()
    obj["apiVersion"] = "v1" if resource.kind == "Event" else resource.api_version
    obj["kind"] = resource.kind
    if resource.kind == "Namespace":
        obj["spec"] = {"finalizers": list((obj.get("spec") or {}).get("finalizers")
                                          or ["kubernetes"])}
        obj["status"] = {"phase": "Active"}
    _defaults(resource, obj)
    return _ordered(obj)


def prepare_update(resource: Resource, obj: Any, old: dict[str, Any], name: str) -> dict[str, Any]:
    """Carry what the client may not change; ``old`` is the stored object."""
    _check_shape(resource, obj)
    meta, old_meta = obj["metadata"], old["metadata"]
    if meta.get("name") and meta["name"] != name:
        raise bad_request(
            f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
        )
    meta["name"] = name
    if resource.namespaced:
        if meta.get("namespace") and meta["namespace"] != old_meta.get("namespace"):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        meta["namespace"] = old_meta.get("namespace")
    else:
        meta.pop("namespace", None)
    if not meta.get("uid"):
        meta["uid"] = old_meta["uid"]
    meta["creationTimestamp"] = old_meta["creationTimestamp"]
    for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
        if field in old_meta:
            meta[field] = old_meta[field]
        else:
            meta.pop(field, None)
    meta.pop("selfLink", None)
    obj["apiVersion"] = "v1" if resource.kind == "Event" else resource.api_version
    obj["kind"] = resource.kind
    if resource.kind == "Namespace":
        obj["spec"] = old.get("spec", {})
        obj["status"] = old.get("status", {})
    _defaults(resource, obj)
    return _ordered(obj)


def _ordered(obj: dict[str, Any]) -> dict[str, Any]:
    """kind, apiVersion, metadata first, as the real server writes them."""
    head = {"kind": obj.pop("kind"), "apiVersion": obj.pop("apiVersion"),
            "metadata": obj.pop("metadata")}
    head.update(obj)
    return head

