"""Request counts per client (user and user agent) by verb and resource: API-server load."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kubesim.requestinfo import RequestInfo

__all__ = ["RequestCounter", "resource_label"]


def resource_label(info: RequestInfo) -> str:
    """``configmaps``, ``leases.coordination.k8s.io``, ``serviceaccounts/token`` or a path."""
    if not info.is_resource_request:
        return info.path
    label = f"{info.resource}.{info.api_group}" if info.api_group else info.resource
    return f"{label}/{info.subresource}" if info.subresource else label


class RequestCounter:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str, str]] = Counter()

    def add(self, user: str, user_agent: str, verb: str, resource: str) -> None:
        self._counts[(user, user_agent, verb, resource)] += 1

    def reset(self) -> None:
        self._counts.clear()

    def snapshot(self) -> dict[str, Any]:
        """``{"total": n, "clients": [{"user", "userAgent", "total", "requests":
        {"<verb> <resource>": n}}]}``, clients sorted by user then user agent."""
        clients: dict[tuple[str, str], dict[str, Any]] = {}
        for (user, agent, verb, resource), n in sorted(self._counts.items()):
            client = clients.setdefault(
                (user, agent), {"user": user, "userAgent": agent, "total": 0, "requests": {}}
            )
            client["total"] += n
            client["requests"][f"{verb} {resource}"] = n
        return {"total": sum(self._counts.values()), "clients": list(clients.values())}
