"""Datadog v1 intake payloads: encoding, size-bounded batching, service check records.

Formats as the Agent's serializer writes them (pkg/serializer/internal/metrics):
events ``{"apiKey": "", "events": {"<source_type_name>": [...]}, "internalHostname": h}``
(``apiKey`` is a legacy field the backend ignores: the key travels in the header only),
service checks a JSON list of ``{check, host_name, timestamp, status, message, tags}``.
The Agent's limits are 2.5 MB compressed and 4 MB uncompressed per payload; bounding the
*uncompressed* size (default 2 MiB) keeps us under both, compressed or not.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_PAYLOAD_ITEMS",
    "Encoded",
    "batches",
    "encode_checks",
    "encode_events",
    "events_body",
    "events_payload",
    "service_check",
    "service_checks_payload",
    "whole_events_payload",
]

MAX_PAYLOAD_BYTES = 2 * 1024 * 1024
MAX_PAYLOAD_ITEMS = 500
_ENVELOPE = 128
"""Bytes of a payload outside its items (envelope, group keys), counted generously."""


Encoded = tuple[bytes, str]
"""One Datadog event or service check JSON-encoded once, and its group (source type name).
A plain tuple: built by the million on the hot path."""


def encode_events(events: Sequence[Mapping[str, Any]]) -> list[Encoded]:
    """Encode Datadog events, grouped by ``source_type_name`` (stable) as the Agent does."""
    groups = [e.get("source_type_name") or "api" for e in events]
    encoded = list(zip(map(orjson.dumps, events), groups, strict=True))
    if groups and groups.count(groups[0]) != len(groups):
        encoded.sort(key=lambda e: e[1])
    return encoded


def encode_checks(checks: Sequence[Mapping[str, Any]]) -> list[Encoded]:
    """Encode service checks (no grouping: the endpoint takes a flat list)."""
    return [(data, "") for data in map(orjson.dumps, checks)]


def events_payload(items: Sequence[Encoded], hostname: str) -> bytes:
    """The uncompressed ``/intake/`` body for encoded events (consecutive groups merged)."""
    groups: list[bytes] = []
    run: list[bytes] = []
    group = None
    for data, item_group in items:
        if item_group != group and run:
            groups.append(orjson.dumps(group) + b":[" + b",".join(run) + b"]")
            run = []
        group = item_group
        run.append(data)
    if run:
        groups.append(orjson.dumps(group) + b":[" + b",".join(run) + b"]")
    return (
        b'{"apiKey":"","events":{'
        + b",".join(groups)
        + b'},"internalHostname":'
        + orjson.dumps(hostname)
        + b"}"
    )


def whole_events_payload(
    events: Sequence[Mapping[str, Any]], hostname: str, max_items: int, max_bytes: int
) -> bytes | None:
    """The one ``/intake/`` body for ``events`` if they share a ``source_type_name`` and fit
    the limits (the events worker's batches), encoded in one orjson call; else None."""
    if not events or len(events) > max_items:
        return None
    name = events[0].get("source_type_name")
    for event in events:
        if event.get("source_type_name") != name:
            return None
    body = events_body(events, hostname)
    return body if len(body) <= max_bytes else None


def events_body(events: Sequence[Mapping[str, Any]], hostname: str) -> bytes:
    """The bytes ``events_payload`` makes of events of the first one's source type."""
    name = events[0].get("source_type_name") or "api"
    return orjson.dumps({"apiKey": "", "events": {name: events}, "internalHostname": hostname})


def service_checks_payload(items: Sequence[Encoded]) -> bytes:
    """The uncompressed ``/api/v1/check_run`` body."""
    return b"[" + b",".join([data for data, _ in items]) + b"]"


def batches(
    items: Sequence[Encoded],
    *,
    max_items: int = MAX_PAYLOAD_ITEMS,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> list[Sequence[Encoded]]:
    """Cut ``items`` into runs of at most ``max_items`` whose payload fits ``max_bytes``.

    An item too big on its own still gets a payload of its own (the intake decides).
    """
    out: list[Sequence[Encoded]] = []
    start = 0
    size = _ENVELOPE
    for i, (data, group) in enumerate(items):
        item_size = len(data) + len(group) + 8
        size += item_size
        if i > start and (i - start >= max_items or size > max_bytes):
            out.append(items[start:i])
            start = i
            size = _ENVELOPE + item_size
    if start < len(items):
        out.append(items[start:])
    return out


def service_check(
    check: str,
    status: int,
    *,
    host: str,
    message: str = "",
    tags: Sequence[str] = (),
    timestamp: float | None = None,
) -> dict[str, Any]:
    """One service check record: status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    return {
        "check": check,
        "host_name": host,
        "timestamp": int(time.time() if timestamp is None else timestamp),
        "status": status,
        "message": message,
        "tags": list(tags) or None,  # the Agent writes null for no tags
    }
