"""Discovery documents (/api, /apis, group versions; legacy and aggregated v2) and /version.

kubectl 1.32 asks /api and /apis for the aggregated ``APIGroupDiscoveryList`` first and
falls back to the legacy documents; both are generated from ``kubesim.resources``.
"""

from __future__ import annotations

import platform
from typing import Any

from kubesim.resources import RESOURCES, Resource, group_versions

__all__ = [
    "AGGREGATED_V2",
    "AGGREGATED_V2BETA1",
    "aggregated",
    "api_group_list",
    "api_resource_list",
    "api_versions",
    "negotiate_aggregated",
    "version_info",
]

AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"


def version_info() -> dict[str, str]:
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "major": "1",
        "minor": "32",
        "emulationMajor": "1",
        "emulationMinor": "32",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "31",
        "gitVersion": "v1.32.0",
        "gitCommit": "kubesim",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T00:00:00Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": f"linux/{machine}",
    }


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _groups() -> list[str]:
    return [g for g, _ in group_versions() if g]


def api_group_list() -> dict[str, Any]:
    groups = []
    for group in _groups():
        versions = [{"groupVersion": f"{group}/{v}", "version": v}
                    for g, v in group_versions() if g == group]
        groups.append({"name": group, "versions": versions, "preferredVersion": versions[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _legacy_entry(r: Resource) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
        "kind": r.kind, "verbs": list(r.verbs),
    }
    if r.short_names:
        entry["shortNames"] = list(r.short_names)
    if r.categories:
        entry["categories"] = list(r.categories)
    return entry


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    served = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
    if not served:
        return None
    resources: list[dict[str, Any]] = []
    for r in served:
        resources.append(_legacy_entry(r))
        for sub in r.subresources:
            entry = {"name": f"{r.plural}/{sub.name}", "singularName": "",
                     "namespaced": r.namespaced, "kind": sub.kind, "verbs": list(sub.verbs)}
            if sub.group:
                entry.update(group=sub.group, version=sub.version)
            resources.append(entry)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources}


def _aggregated_resource(r: Resource) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": "Namespaced" if r.namespaced else "Cluster",
        "singularResource": r.singular,
        "verbs": list(r.verbs),
    }
    if r.short_names:
        entry["shortNames"] = list(r.short_names)
    if r.subresources:
        entry["subresources"] = [
            {"subresource": s.name,
             "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
             "verbs": list(s.verbs)}
            for s in r.subresources
        ]
    return entry


def aggregated(core: bool, version: str = "v2") -> dict[str, Any]:
    """The APIGroupDiscoveryList for /api (``core``) or /apis."""
    names = [""] if core else _groups()
    items = []
    for group in names:
        versions = []
        for g, v in group_versions():
            if g != group:
                continue
            resources = [_aggregated_resource(r) for r in RESOURCES
                         if (r.group, r.version) == (g, v)]
            versions.append({"version": v, "resources": resources, "freshness": "Current"})
        items.append({"metadata": {"name": group, "creationTimestamp": None},
                      "versions": versions})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}


def negotiate_aggregated(accept: str) -> str | None:
    """The aggregated media type the client accepts (first preference), if any."""
    for part in accept.split(","):
        part = part.strip().replace(" ", "")
        if "as=APIGroupDiscoveryList" in part and "g=apidiscovery.k8s.io" in part:
            if "v=v2beta1" in part:
                return AGGREGATED_V2BETA1
            if "v=v2" in part:
                return AGGREGATED_V2
    return None
