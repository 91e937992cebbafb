"""Who is asking and what they ask for: the attributes authorization and counters work on.

Mirrors the API server's ``RequestInfo`` (k8s.io/apiserver/pkg/endpoints/request) and
``user.Info``: the server resolves every HTTP request into these before anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RequestInfo", "UserInfo"]


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
