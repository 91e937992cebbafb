"""Who is asking and what they ask for: the attributes authorization and counters work on.

Mirrors the API server's ``RequestInfo`` (k8s.io/apiserver/pkg/endpoints/request) and
``user.Info``: the server resolves every HTTP request into these before anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RequestInfo", "UserInfo", "parse_request_info"]


@dataclass(frozen=True, slots=True)
class UserInfo:
    """An authenticated (or anonymous) user, as the authorizer sees it."""

    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A request resolved the way the real API server resolves it.

    For resource requests ``verb`` is one of get, list, watch, create, update, patch,
    delete, deletecollection; for non-resource requests (``/version``, ``/readyz``, ...)
    it is the lower-cased HTTP method, as in the real server.
    """

    is_resource_request: bool
    verb: str
    path: str
    api_group: str = ""
    """"" for the core (legacy) group."""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
          "DELETE": "delete"}
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[0].lower() not in ("false", "0", "")


def _exact_name(field_selector: str) -> str:
    """metadata.name from a ``metadata.name=x`` / ``==`` term, as RequiresExactMatch does."""
    for term in field_selector.split(","):
        for op in ("==", "="):
            key, sep, value = term.partition(op)
            if sep and key.strip() == "metadata.name" and not key.endswith("!"):
                valid = value not in (".", "..") and "/" not in value and "%" not in value
                return value if valid else ""
    return ""


def parse_request_info(method: str, path: str, query: Mapping[str, list[str]]) -> RequestInfo:
    """Resolve a request like k8s.io/apiserver's RequestInfoFactory.NewRequestInfo.

    ``query`` maps parameter names to their values (as ``urllib.parse.parse_qs`` gives).
    """
    parts = [p for p in path.strip("/").split("/") if p] if path.strip("/") else []
    non_resource = RequestInfo(False, method.lower(), path)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix == "apis":
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    verb = _VERBS.get(method.upper(), "")
    if parts and parts[0] == "watch":
        verb, parts = "watch", parts[1:]
    namespace = ""
    if parts and parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0] if parts else ""
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 else ""
    if not name and verb == "get":
        verb = "watch" if _truthy(query.get("watch")) else "list"
        name = _exact_name((query.get("fieldSelector") or [""])[0])
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(True, verb, path, group, version, namespace, resource, subresource, name)
