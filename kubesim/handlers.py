"""Resource requests: get, list, create, update, patch, delete, deletecollection.

The order of checks follows the real server's handlers and generic registry store, so a
request with several problems fails the way kube-apiserver would fail it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from kubesim import errors, registry
from kubesim.bodies import check_accept, json_response, media_type, read_object, render
from kubesim.cluster import Cluster
from kubesim.components import component_statuses
from kubesim.conversion import core_to_events_v1, events_v1_to_core
from kubesim.listing import list_objects
from kubesim.patch import JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, apply_patch
from kubesim.requestinfo import RequestInfo
from kubesim.resources import Resource, find, lookup
from kubesim.store import Stored, object_key
from kubesim.subresources import existing, serve_subresource
from kubesim.tables import table, wants_table
from kubesim.validation import validate, validate_update
from kubesim.watch import serve_watch

__all__ = ["handle_resource"]

_PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")


async def handle_resource(
    request: web.Request, cluster: Cluster, info: RequestInfo
) -> web.StreamResponse:
    resource = lookup(info.api_group, info.api_version, info.resource)
    if resource is None:
        raise errors.path_not_found()
    check_accept(request)
    query: Mapping[str, str] = request.query
    if info.subresource:
        return await serve_subresource(request, cluster, resource, info)
    if not resource.supports(info.verb):
        raise errors.method_not_supported()
    if resource.plural == "namespaces":
        namespace = ""
    else:
        namespace = info.namespace
        if not resource.namespaced and namespace:
            raise errors.path_not_found()
        if resource.namespaced and not namespace and info.verb not in (
            "list", "watch", "deletecollection"
        ):
            raise errors.path_not_found()
    if resource.plural == "componentstatuses":
        return component_statuses(request, cluster, info)
    verb = info.verb
    if verb == "get":
        stored = existing(cluster, resource, namespace, info.name)
        if wants_table(request.headers.get("Accept", "")):
            return json_response(table(resource, [stored.obj], {"resourceVersion": str(
                stored.rv)}, query.get("includeObject", "Metadata")))
        return json_response(render(resource, stored))
    if verb == "list":
        return await _list(request, cluster, resource, namespace)
    if verb == "watch":
        return await serve_watch(request, cluster, resource, info, namespace)
    if verb == "create":
        return await _create(request, cluster, resource, namespace)
    if verb == "update":
        return await _update(request, cluster, resource, namespace, info.name)
    if verb == "patch":
        return await _patch(request, cluster, resource, namespace, info.name)
    if verb == "delete":
        return await _delete(request, cluster, resource, namespace, info.name)
    if verb == "deletecollection":
        return await _delete_collection(request, cluster, resource, namespace)
    raise errors.method_not_supported()


async def _list(
    request: web.Request, cluster: Cluster, resource: Resource, namespace: str
) -> web.Response:
    result = await list_objects(cluster.store, resource, namespace, request.query)
    if wants_table(request.headers.get("Accept", "")):
        return json_response(table(resource, [s.obj for s in result.items], result.metadata,
                                   request.query.get("includeObject", "Metadata")))
    body = b'{"kind":"%s","apiVersion":"%s","metadata":%s,"items":[%s]}' % (
        resource.list_kind.encode(), resource.api_version.encode(),
        orjson.dumps(result.metadata), b",".join(render(resource, s) for s in result.items),
    )
    return json_response(body)


# -- writes ---------------------------------------------------------------------------------


def _field_validation(request: web.Request, resource: Resource, obj: Any,
                      headers: dict[str, str]) -> None:
    """Drop unknown fields: 400 with fieldValidation=Strict, a warning with Warn (default)."""
    if not isinstance(obj, dict):
        return
    unknown = registry.prune_unknown(resource, obj)
    if not unknown:
        return
    mode = request.query.get("fieldValidation", "Warn")
    if mode == "Strict":
        raise errors.bad_request("strict decoding error: " + ", ".join(
            f'unknown field "{u}"' for u in unknown))
    if mode != "Ignore":
        headers["Warning"] = ", ".join(f'299 - "unknown field \\"{u}\\""' for u in unknown)


def _check_type(resource: Resource, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise errors.bad_request(
            f"the object provided is unrecognized (must be of type {resource.kind})")
    kind, version = obj.get("kind"), obj.get("apiVersion")
    expected = resource.api_version
    if (kind and kind != resource.kind) or (version and version != expected):
        raise errors.bad_request(
            f'{kind or resource.kind} in version "{version or expected}" cannot be handled as a '
            f"{resource.kind}: no kind \"{kind}\" is registered for version \"{version}\""
        )
    return obj


def _to_storage(resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    """events.k8s.io/v1 bodies are stored as core/v1 Events (one store, as the real one)."""
    return events_v1_to_core(obj) if resource.group == "events.k8s.io" else obj


def _dry_run(request: web.Request) -> bool:
    return "All" in request.query.getall("dryRun", [])


def _require_namespace(cluster: Cluster, resource: Resource, namespace: str,
                       name: str) -> None:
    """NamespaceLifecycle admission: the namespace must exist and not be terminating."""
    if not resource.namespaced:
        return
    ns = cluster.store.get("namespaces", namespace)
    if ns is None:
        raise errors.not_found("namespaces", "", namespace)
    if ns.obj["metadata"].get("deletionTimestamp"):
        err = errors.forbidden(
            f'{resource.qualified} "{name}" is forbidden: unable to create new content in '
            f"namespace {namespace} because it is being terminated", resource.plural,
            resource.group, name)
        assert err.details is not None
        err.details["causes"] = [{"reason": "NamespaceTerminating", "message": "namespace "
                                  f"{namespace} is being terminated", "field":
                                  "metadata.namespace"}]
        raise err


def _store(cluster: Cluster, resource: Resource, obj: dict[str, Any]) -> Stored:
    meta = obj["metadata"]
    if resource.kind == "Secret" and obj.get("type") == "kubernetes.io/service-account-token":
        cluster.auth.fill_token_secret(obj, cluster.ca_pem)
    return cluster.store.put(resource.bucket, object_key(meta.get("namespace", ""), meta["name"]),
                             obj)


def _write_response(resource: Resource, stored: Stored | dict[str, Any], status: int,
                    headers: dict[str, str]) -> web.Response:
    if isinstance(stored, Stored):
        return json_response(render(resource, stored), status, headers)
    if resource.group == "events.k8s.io":
        stored = core_to_events_v1(stored)
    return json_response(stored, status, headers)


def _create_object(request: web.Request, cluster: Cluster, resource: Resource, namespace: str,
                   obj: dict[str, Any], headers: dict[str, str]) -> web.Response:
    obj = registry.prepare_create(resource, obj, namespace)
    name = obj["metadata"].get("name", "")
    errs = validate(resource, obj)
    if errs:
        raise errors.invalid(resource.kind, resource.group, name, errs)
    _require_namespace(cluster, resource, namespace, name)
    if cluster.store.get(resource.bucket, object_key(namespace, name)) is not None:
        raise errors.already_exists(resource.plural, resource.group, name)
    if _dry_run(request):
        return _write_response(resource, obj, 201, headers)
    stored = _store(cluster, resource, obj)
    if resource.plural == "namespaces":
        cluster.create_object(find("serviceaccounts"), {"metadata": {"name": "default"}}, name)
    return _write_response(resource, stored, 201, headers)


async def _create(
    request: web.Request, cluster: Cluster, resource: Resource, namespace: str
) -> web.Response:
    headers: dict[str, str] = {}
    obj = _check_type(resource, await read_object(request, cluster))
    _field_validation(request, resource, obj, headers)
    return _create_object(request, cluster, resource, namespace, _to_storage(resource, obj),
                          headers)


def _update_object(request: web.Request, cluster: Cluster, resource: Resource, namespace: str,
                   name: str, obj: dict[str, Any], old: Stored,
                   headers: dict[str, str]) -> web.Response:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    new_rv = str(meta.get("resourceVersion") or "")
    if not new_rv:
        if not resource.unconditional_update:
            raise errors.invalid(resource.plural, resource.group, name, [errors.FieldError(
                "metadata.resourceVersion", "FieldValueInvalid", "must be specified for an update",
                errors.GoValue("0x0"))])
    elif new_rv != str(old.rv):
        raise errors.conflict(resource.plural, resource.group, name)
    uid = meta.get("uid")
    if uid and uid != old.obj["metadata"]["uid"]:
        raise errors.conflict(resource.plural, resource.group, name,
                              f"Precondition failed: UID in precondition: {uid}, UID in object "
                              f"meta: {old.obj['metadata']['uid']}")
    obj = registry.prepare_update(resource, obj, old.obj, name)
    errs = validate_update(resource, obj, old.obj)
    if errs:
        raise errors.invalid(resource.kind, resource.group, name, errs)
    obj["metadata"]["resourceVersion"] = str(old.rv)
    if obj == old.obj or _dry_run(request):
        # A no-op update writes nothing: same resourceVersion, no watch event.
        return _write_response(resource, old if obj == old.obj else obj, 200, headers)
    return _write_response(resource, _store(cluster, resource, obj), 200, headers)


async def _update(
    request: web.Request, cluster: Cluster, resource: Resource, namespace: str, name: str
) -> web.Response:
    headers: dict[str, str] = {}
    obj = _check_type(resource, await read_object(request, cluster))
    _field_validation(request, resource, obj, headers)
    obj = _to_storage(resource, obj)
    old = cluster.store.get(resource.bucket, object_key(namespace, name))
    if old is None:
        if not resource.create_on_update:
            raise errors.not_found(resource.plural, resource.group, name)
        meta = obj.setdefault("metadata", {})
        if isinstance(meta, dict) and meta.get("name") and meta["name"] != name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match "
                                     f"the name on the URL ({name})")
        if isinstance(meta, dict):
            meta["name"] = name
        return _create_object(request, cluster, resource, namespace, obj, headers)
    return _update_object(request, cluster, resource, namespace, name, obj, old, headers)


_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH)


async def _patch(
    request: web.Request, cluster: Cluster, resource: Resource, namespace: str, name: str
) -> web.Response:
    ctype = media_type(request)
    if ctype not in _PATCH_TYPES:
        raise errors.unsupported_media_type(list(_PATCH_TYPES))
    try:
        patch = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"error decoding patch: {exc}") from None
    old = existing(cluster, resource, namespace, name)
    current = orjson.loads(render(resource, old))
    patched = apply_patch(ctype, current, patch)
    headers: dict[str, str] = {}
    patched = _check_type(resource, patched)
    _field_validation(request, resource, patched, headers)
    patched = _to_storage(resource, patched)
    if isinstance(patched.get("metadata"), dict):
        patched["metadata"].setdefault("resourceVersion", str(old.rv))
    return _update_object(request, cluster, resource, namespace, name, patched, old, headers)


def _delete_options(body: bytes, query: Mapping[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if body.strip():
        try:
            options = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise errors.bad_request(f"couldn't decode DeleteOptions: {exc}") from None
        if not isinstance(options, dict):
            raise errors.bad_request("DeleteOptions must be a JSON object")
    return options


def _check_preconditions(resource: Resource, stored: Stored, options: dict[str, Any]) -> None:
    pre = options.get("preconditions") or {}
    meta = stored.obj["metadata"]
    if pre.get("uid") and pre["uid"] != meta["uid"]:
        raise errors.conflict(resource.plural, resource.group, meta["name"],
                              f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                              f"object meta: {meta['uid']}")
    if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
        raise errors.conflict(resource.plural, resource.group, meta["name"],
                              "Precondition failed: ResourceVersion in precondition: "
                              f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                              f"{meta['resourceVersion']}")


def _delete_namespace(cluster: Cluster, stored: Stored) -> Stored:
    """Mark the namespace Terminating; the namespace controller empties and removes it."""
    if stored.obj["metadata"].get("deletionTimestamp"):
        return stored
    obj = stored.copy()
    obj["metadata"]["deletionTimestamp"] = registry.now_rfc3339()
    obj["metadata"]["deletionGracePeriodSeconds"] = 0
    obj["status"] = {"phase": "Terminating"}
    terminating = cluster.store.put("namespaces", stored.key, obj)
    cluster.finalize_namespace_later(stored.key)
    return terminating


async def _delete(
    request: web.Request, cluster: Cluster, resource: Resource, namespace: str, name: str
) -> web.Response:
    options = _delete_options(await request.read(), request.query)
    stored = existing(cluster, resource, namespace, name)
    _check_preconditions(resource, stored, options)
    if resource.plural == "namespaces":
        if name in _PROTECTED_NAMESPACES:
            raise errors.forbidden(f'namespaces "{name}" is forbidden: this namespace may not be '
                                   "deleted", "namespaces", "", name)
        if _dry_run(request) or "All" in (options.get("dryRun") or []):
            return json_response(stored.raw)
        return json_response(_delete_namespace(cluster, stored).raw)
    if not (_dry_run(request) or "All" in (options.get("dryRun") or [])):
        cluster.store.remove(resource.bucket, stored.key)
    details: dict[str, Any] = {"name": name}
    if resource.group:
        details["group"] = resource.group
    details.update(kind=resource.plural, uid=stored.obj["metadata"]["uid"])
    return json_response(errors.success_status(details))


async def _delete_collection(
    request: web.Request, cluster: Cluster, resource: Resource, namespace: str
) -> web.Response:
    options = _delete_options(await request.read(), request.query)
    query = {k: v for k, v in request.query.items() if k != "limit"}
    result = await list_objects(cluster.store, resource, namespace, query)
    dry = _dry_run(request) or "All" in (options.get("dryRun") or [])
    if not dry:
        for stored in result.items:
            cluster.store.remove(resource.bucket, stored.key)
    body = b'{"kind":"%s","apiVersion":"%s","metadata":%s,"items":[%s]}' % (
        resource.list_kind.encode(), resource.api_version.encode(),
        orjson.dumps({"resourceVersion": str(cluster.store.rv)}),
        b",".join(render(resource, s) for s in result.items),
    )
    return json_response(body)
