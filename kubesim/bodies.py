"""Request bodies in (JSON, YAML, protobuf) and response bodies out (JSON bytes)."""

from __future__ import annotations

from typing import Any

import orjson
import yaml
from aiohttp import web

from kubesim import errors
from kubesim.cluster import Cluster
from kubesim.conversion import core_to_events_v1
from kubesim.resources import Resource
from kubesim.store import Stored

__all__ = [
    "PROTOBUF",
    "check_accept",
    "json_response",
    "media_type",
    "read_object",
    "render",
]

PROTOBUF = "application/vnd.kubernetes.protobuf"
_ACCEPTED = ["application/json", "application/yaml", PROTOBUF]


def media_type(request: web.BaseRequest) -> str:
    """The request's Content-Type without parameters ("" when absent)."""
    return request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


async def read_object(request: web.BaseRequest, cluster: Cluster) -> Any:
    """Decode a create/update body; 400 when malformed, 415 for unknown media types."""
    raw = await request.read()
    ctype = media_type(request)
    if ctype in ("", "application/json", "*/*"):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            message = f"couldn't get version/kind; json parse error: {exc}"
            raise errors.bad_request(message) from None
    if ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise errors.bad_request(f"error converting YAML to JSON: {exc}") from None
    if ctype == PROTOBUF:
        if cluster.protobuf is None:
            raise errors.unsupported_media_type(["application/json", "application/yaml"])
        try:
            return cluster.protobuf.decode(raw)
        except cluster.protobuf.ProtobufError as exc:
            raise errors.bad_request(f"failed to decode protobuf body: {exc}") from None
    raise errors.unsupported_media_type(_ACCEPTED)


def check_accept(request: web.BaseRequest) -> None:
    """406 unless the client takes JSON (every answer here is JSON)."""
    accept = request.headers.get("Accept", "")
    if not accept:
        return
    for part in accept.split(","):
        mt = part.split(";", 1)[0].strip().lower()
        if mt in ("*/*", "application/*", "application/json") or mt.endswith("+json"):
            return
    raise errors.not_acceptable()


def render(resource: Resource, stored: Stored) -> bytes:
    """The stored object's bytes in ``resource``'s API form (events.k8s.io converts)."""
    if resource.group == "events.k8s.io":
        return stored.alt("events.k8s.io/v1", core_to_events_v1)
    return stored.raw


def json_response(
    body: bytes | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    if not isinstance(body, bytes):
        body = orjson.dumps(body)
    return web.Response(body=body, status=status, content_type="application/json",
                        headers=headers)
