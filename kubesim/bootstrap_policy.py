"""The default RBAC objects a real kube-apiserver creates at start, for the clients we serve.

Copied from k8s.io/kubernetes ``plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go``
(its testdata ``cluster-roles.yaml`` / ``cluster-role-bindings.yaml``), current releases:
lists inside a rule sorted as the real builder sorts them, keys in the real JSON order.

Kept: the roles every user or ServiceAccount holds without any binding of its own
(discovery, health, version, self-reviews, service-account issuer discovery) and
``cluster-admin`` for ``system:masters``. Left out: component roles (controller manager,
scheduler, nodes, ...) and the aggregated ``admin``/``edit``/``view`` roles, which bind
nobody by default. Nothing here grants a ServiceAccount access to any resource.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bootstrap_objects"]

_RBAC_V1 = "rbac.authorization.k8s.io/v1"
_RBAC_GROUP = "rbac.authorization.k8s.io"
_AUTHENTICATED = "system:authenticated"
_UNAUTHENTICATED = "system:unauthenticated"


def _metadata(name: str) -> dict[str, Any]:
    # Every bootstrap object carries these: `autoupdate` makes the real server reconcile it.
    return {
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    }


def _cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": _RBAC_V1,
        "kind": "ClusterRole",
        "metadata": _metadata(name),
        "rules": rules,
    }


def _cluster_role_binding(name: str, *groups: str) -> dict[str, Any]:
    return {
        "apiVersion": _RBAC_V1,
        "kind": "ClusterRoleBinding",
        "metadata": _metadata(name),
        "subjects": [{"kind": "Group", "apiGroup": _RBAC_GROUP, "name": g} for g in groups],
        "roleRef": {"apiGroup": _RBAC_GROUP, "kind": "ClusterRole", "name": name},
    }


def _get_urls(*urls: str) -> dict[str, Any]:
    return {"verbs": ["get"], "nonResourceURLs": sorted(urls)}


def bootstrap_objects() -> list[dict[str, Any]]:
    """ClusterRoles first, then their ClusterRoleBindings; fresh dicts on every call."""
    roles = [
        _cluster_role(
            "cluster-admin",
            [
                {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
                {"verbs": ["*"], "nonResourceURLs": ["*"]},
            ],
        ),
        _cluster_role(
            "system:discovery",
            [
                _get_urls(
                    "/livez", "/readyz", "/healthz", "/version", "/version/",
                    "/openapi", "/openapi/*", "/api", "/api/*", "/apis", "/apis/*",
                )
            ],
        ),
        _cluster_role(
            "system:basic-user",
            [
                {
                    "verbs": ["create"],
                    "apiGroups": ["authorization.k8s.io"],
                    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                },
                {
                    "verbs": ["create"],
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": ["selfsubjectreviews"],
                },
            ],
        ),
        _cluster_role(
            "system:public-info-viewer",
            [_get_urls("/livez", "/readyz", "/healthz", "/version", "/version/")],
        ),
        _cluster_role(
            "system:service-account-issuer-discovery",
            [
                _get_urls(
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                )
            ],
        ),
    ]
    bindings = [
        _cluster_role_binding("cluster-admin", "system:masters"),
        _cluster_role_binding("system:basic-user", _AUTHENTICATED),
        _cluster_role_binding("system:discovery", _AUTHENTICATED),
        _cluster_role_binding("system:public-info-viewer", _AUTHENTICATED, _UNAUTHENTICATED),
        _cluster_role_binding("system:service-account-issuer-discovery", "system:serviceaccounts"),
    ]
    return roles + bindings
