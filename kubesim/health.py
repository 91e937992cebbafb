"""/healthz, /livez, /readyz with the real server's checks and text output.

``?verbose`` lists every check (``[+]ping ok``); ``?exclude=<check>`` skips one;
``/readyz/<check>`` asks for one. The etcd checks follow the ``etcd-0`` component's health
(switchable through the admin API), so a control-plane check sees /readyz fail with it.
"""

from __future__ import annotations

from aiohttp import web

from kubesim.cluster import Cluster

__all__ = ["health_response", "is_health_path"]

_POST_START_HOOKS = (
    "start-apiserver-admission-initializer", "generic-apiserver-start-informers",
    "priority-and-fairness-config-consumer", "priority-and-fairness-filter",
    "storage-object-count-tracker-hook", "start-apiextensions-informers",
    "start-apiextensions-controllers", "crd-informer-synced",
    "start-system-namespaces-controller", "start-cluster-authentication-info-controller",
    "start-kube-apiserver-identity-lease-controller",
    "start-kube-apiserver-identity-lease-garbage-collector",
    "start-legacy-token-tracking-controller", "start-service-ip-repair-controllers",
    "rbac/bootstrap-roles", "scheduling/bootstrap-system-priority-classes",
    "priority-and-fairness-config-producer", "bootstrap-controller",
    "aggregator-reload-proxy-client-cert", "start-kube-aggregator-informers",
    "apiservice-status-local-available-controller",
    "apiservice-status-remote-available-controller", "apiservice-registration-controller",
    "apiservice-discovery-controller", "kube-apiserver-autoregistration",
)
_LIVEZ = ("ping", "log", "etcd", *(f"poststarthook/{h}" for h in _POST_START_HOOKS),
          "autoregister-completion", "poststarthook/apiservice-openapi-controller",
          "poststarthook/apiservice-openapiv3-controller")
_READYZ = ("ping", "log", "etcd", "etcd-readiness", "informer-sync", *_LIVEZ[3:], "shutdown")
_CHECKS = {"/healthz": _LIVEZ, "/livez": _LIVEZ, "/readyz": _READYZ}


def is_health_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in _CHECKS)


def _text(body: str, status: int) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/plain",
                        charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})


def health_response(request: web.BaseRequest, cluster: Cluster) -> web.Response:
    path = request.path.rstrip("/")
    endpoint = next(p for p in _CHECKS if path == p or path.startswith(p + "/"))
    checks = _CHECKS[endpoint]
    etcd = cluster.components.get("etcd-0")
    failing = set() if etcd is None or etcd.healthy else {"etcd", "etcd-readiness"}
    if path != endpoint:
        check = path[len(endpoint) + 1:]
        if check not in checks:
            return _text("404 page not found\n", 404)
        if check in failing:
            return _text(f"internal server error: {check} failed\n", 500)
        return _text("ok", 200)
    excluded = set(request.query.getall("exclude", []))
    lines, failed = [], False
    for check in checks:
        if check in excluded:
            continue
        if check in failing:
            lines.append(f"[-]{check} failed: reason withheld")
            failed = True
        else:
            lines.append(f"[+]{check} ok")
    for check in sorted(excluded):
        lines.append(f"warn: some health checks cannot be excluded: no matches for \"{check}\""
                     if check not in checks else f"[+]{check} excluded: ok")
    name = endpoint.lstrip("/")
    if failed:
        return _text("\n".join(lines) + f"\n{name} check failed\n", 500)
    if "verbose" in request.query:
        return _text("\n".join(lines) + f"\n{name} check passed\n", 200)
    return _text("ok", 200)
