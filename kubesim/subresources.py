"""Subresources: ``serviceaccounts/<name>/token`` (TokenRequest), the one kubesim serves."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from kubesim import errors, registry
from kubesim.bodies import json_response, read_object
from kubesim.cluster import Cluster
from kubesim.requestinfo import RequestInfo
from kubesim.resources import Resource
from kubesim.store import Stored, object_key

__all__ = ["existing", "serve_subresource"]


def existing(cluster: Cluster, resource: Resource, namespace: str, name: str) -> Stored:
    """The stored object, or the real server's 404."""
    stored = cluster.store.get(resource.bucket, object_key(namespace, name))
    if stored is None:
        raise errors.not_found(resource.plural, resource.group, name)
    return stored


async def serve_subresource(
    request: web.Request, cluster: Cluster, resource: Resource, info: RequestInfo
) -> web.Response:
    sub = next((s for s in resource.subresources if s.name == info.subresource), None)
    if sub is None:
        raise errors.path_not_found()
    if info.verb not in sub.verbs:
        raise errors.method_not_supported()
    # The only subresource served: serviceaccounts/<name>/token (TokenRequest).
    body = await read_object(request, cluster)
    spec = (body.get("spec") or {}) if isinstance(body, dict) else {}
    seconds = int(spec.get("expirationSeconds") or 3600)
    existing(cluster, resource, info.namespace, info.name)  # 404 for a missing account
    if seconds < 600:
        raise errors.invalid("TokenRequest", "authentication.k8s.io", "", [errors.FieldError(
            "spec.expirationSeconds", "FieldValueInvalid",
            "may not specify a duration less than 10 minutes", seconds)])
    token, expires = cluster.auth.issue(info.namespace, info.name, seconds)
    expiry = datetime.fromtimestamp(expires, UTC)
    answer = {
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": info.name, "namespace": info.namespace,
                     "creationTimestamp": registry.now_rfc3339()},
        "spec": {"audiences": spec.get("audiences") or [
            "https://kubernetes.default.svc.cluster.local"],
            "expirationSeconds": seconds, "boundObjectRef": spec.get("boundObjectRef")},
        "status": {"token": token,
                   "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")},
    }
    return json_response(answer, 201)
