"""A minimal OpenAPI v3 so ``kubectl create -f`` / ``apply -f`` validate server-side.

kubectl 1.32 refuses to create from a file when it cannot download OpenAPI ("failed to
download openapi"). It only needs, per group version, each kind's PATCH operation with its
``x-kubernetes-group-version-kind`` and the ``fieldValidation`` query parameter: then it
sends ``fieldValidation=Strict`` and lets the server validate. The PATCH request bodies list
no strategic-merge type, so ``kubectl apply`` computes its patch from its built-in types
(as it does without OpenAPI) instead of needing full schemas. /openapi/v2 stays 404.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from kubesim.resources import RESOURCES, group_versions

__all__ = ["gv_document", "gv_path", "root_document"]


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def gv_document(path: str) -> dict[str, Any] | None:
    """The OpenAPI v3 document for ``api/v1`` or ``apis/<group>/<version>``."""
    for group, version in group_versions():
        if gv_path(group, version) == path:
            break
    else:
        return None
    paths: dict[str, Any] = {}
    for r in RESOURCES:
        if (r.group, r.version) != (group, version) or "patch" not in r.verbs:
            continue
        ns = "/namespaces/{namespace}" if r.namespaced else ""
        paths[f"/{path}{ns}/{r.plural}/{{name}}"] = {
            "patch": {
                "operationId": f"patch{r.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {
                    "group": r.group, "version": r.version, "kind": r.kind,
                },
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"},
                     "uniqueItems": True},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string"},
                     "uniqueItems": True},
                    {"name": "dryRun", "in": "query", "schema": {"type": "string"},
                     "uniqueItems": True},
                ],
                "requestBody": {"content": {
                    "application/json-patch+json": {"schema": {"type": "object"}},
                    "application/merge-patch+json": {"schema": {"type": "object"}},
                }},
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": {}}}


def root_document() -> dict[str, Any]:
    """/openapi/v3: where each group version's document lives (hash-versioned URLs)."""
    paths = {}
    for group, version in group_versions():
        path = gv_path(group, version)
        digest = hashlib.sha512(orjson.dumps(gv_document(path))).hexdigest()[:128].upper()
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}
