"""Object validation with the real server's field paths and messages (422 Invalid causes)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kubesim.errors import FieldError, GoValue
from kubesim.resources import Resource

__all__ = ["GoValue", "validate", "validate_update"]

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + r")*"
_QUALIFIED_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = r"(" + _QUALIFIED_NAME_PART + r")?"
_CONFIG_KEY = r"[-._a-zA-Z0-9]+"

_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    f"for validation is '{_DNS1123_SUBDOMAIN}')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    f"used for validation is '{_DNS1123_LABEL}')"
)
_NAME_PART_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    f"validation is '{_QUALIFIED_NAME_PART}')"
)
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  "
    f"or '12345', regex used for validation is '{_LABEL_VALUE}')"
)
_CONFIG_KEY_MSG = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
    f"'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '{_CONFIG_KEY}')"
)


def _invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(path, "FieldValueInvalid", detail, value)


def _required(path: str, detail: str = "") -> FieldError:
    return FieldError(path, "FieldValueRequired", detail)


def _dns_subdomain(value: str) -> list[str]:
    msgs = []
    if len(value) > 253:
        msgs.append("must be no more than 253 characters")
    if not re.fullmatch(_DNS1123_SUBDOMAIN, value):
        msgs.append(_SUBDOMAIN_MSG)
    return msgs


def _dns_label(value: str) -> list[str]:
    msgs = []
    if len(value) > 63:
        msgs.append("must be no more than 63 characters")
    if not re.fullmatch(_DNS1123_LABEL, value):
        msgs.append(_LABEL_MSG)
    return msgs


def _path_segment(value: str) -> list[str]:
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    for bad in ("/", "%"):
        if bad in value:
            return [f"may not contain '{bad}'"]
    return []


_NAME_RULES = {"subdomain": _dns_subdomain, "label": _dns_label, "path-segment": _path_segment}


def _qualified_name(value: str) -> list[str]:
    prefix, _, name = value.rpartition("/")
    msgs = []
    if "/" in value and not prefix:
        msgs.append("prefix part must be non-empty")
    elif prefix:
        msgs.extend("prefix part " + m for m in _dns_subdomain(prefix))
    if not name:
        msgs.append("name part must be non-empty")
    else:
        if len(name) > 63:
            msgs.append("name part must be no more than 63 characters")
        if not re.fullmatch(_QUALIFIED_NAME_PART, name):
            msgs.append(_NAME_PART_MSG)
    return msgs


def _validate_meta(resource: Resource, meta: Mapping[str, Any]) -> list[FieldError]:
    errs: list[FieldError] = []
    name = meta.get("name") or ""
    if not name:
        if not meta.get("generateName"):
            errs.append(_required("metadata.name", "name or generateName is required"))
    else:
        rule = _NAME_RULES[resource.name_rule]
        errs.extend(_invalid("metadata.name", name, m) for m in rule(name))
    if resource.namespaced:
        ns = meta.get("namespace") or ""
        if not ns:
            errs.append(_required("metadata.namespace"))
    labels = meta.get("labels") or {}
    for key, value in labels.items():
        errs.extend(_invalid("metadata.labels", key, m) for m in _qualified_name(key))
        if not isinstance(value, str):
            errs.append(_invalid(f"metadata.labels[{key}]", value, "must be a string"))
            continue
        if len(value) > 63:
            errs.append(_invalid("metadata.labels", value, "must be no more than 63 characters"))
        if not re.fullmatch(_LABEL_VALUE, value):
            errs.append(_invalid("metadata.labels", value, _LABEL_VALUE_MSG))
    for key in meta.get("annotations") or {}:
        errs.extend(_invalid("metadata.annotations", key, m) for m in _qualified_name(key.lower()))
    return errs


def _validate_data_keys(obj: Mapping[str, Any], fields: tuple[str, ...]) -> list[FieldError]:
    errs: list[FieldError] = []
    seen: set[str] = set()
    size = 0
    for field in fields:
        for key, value in (obj.get(field) or {}).items():
            if not re.fullmatch(_CONFIG_KEY, key) or key in (".", "..") or key.startswith(".."):
                detail = _CONFIG_KEY_MSG if key not in (".", "..") else f"must not be '{key}'"
                errs.append(_invalid(f"{field}[{key}]", key, detail))
            if key in seen:
                errs.append(FieldError(f"{field}[{key}]", "FieldValueInvalid", "duplicate of key "
                                       f"present in {fields[0]}", key))
            seen.add(key)
            size += len(key) + len(value or "")
    if size > 1024 * 1024:
        errs.append(FieldError("", "FieldValueTooLong", "must have at most 1048576 bytes"))
    return errs


def _validate_rules(obj: Mapping[str, Any], namespaced: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    for i, rule in enumerate(obj.get("rules") or []):
        path = f"rules[{i}]"
        if not rule.get("verbs"):
            errs.append(_required(f"{path}.verbs", "verbs must contain at least one value"))
        urls = rule.get("nonResourceURLs") or []
        if urls:
            if namespaced:
                errs.append(_invalid(f"{path}.nonResourceURLs", urls,
                                     "namespaced rules cannot apply to non-resource URLs"))
            if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
                errs.append(_invalid(f"{path}.nonResourceURLs", urls,
                                     "rules cannot apply to both regular resources and "
                                     "non-resource URLs"))
            continue
        if not rule.get("apiGroups"):
            errs.append(_required(f"{path}.apiGroups",
                                  "resource rules must supply at least one api group"))
        if not rule.get("resources"):
            errs.append(_required(f"{path}.resources",
                                  "resource rules must supply at least one resource"))
    return errs


def _validate_binding(obj: Mapping[str, Any], namespaced: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    ref = obj.get("roleRef") or {}
    if ref.get("apiGroup") != "rbac.authorization.k8s.io":
        errs.append(FieldError("roleRef.apiGroup", "FieldValueNotSupported",
                               'supported values: "rbac.authorization.k8s.io"',
                               ref.get("apiGroup") or ""))
    kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
    if ref.get("kind") not in kinds:
        errs.append(FieldError("roleRef.kind", "FieldValueNotSupported",
                               "supported values: " + ", ".join(f'"{k}"' for k in kinds),
                               ref.get("kind") or ""))
    if not ref.get("name"):
        errs.append(_required("roleRef.name"))
    for i, subject in enumerate(obj.get("subjects") or []):
        path = f"subjects[{i}]"
        kind = subject.get("kind")
        if not subject.get("name"):
            errs.append(_required(f"{path}.name"))
        if kind == "ServiceAccount":
            if subject.get("apiGroup"):
                errs.append(FieldError(f"{path}.apiGroup", "FieldValueNotSupported",
                                       'supported values: ""', subject["apiGroup"]))
            if not namespaced and not subject.get("namespace"):
                errs.append(_required(f"{path}.namespace"))
        elif kind in ("User", "Group"):
            if subject.get("apiGroup") != "rbac.authorization.k8s.io":
                errs.append(FieldError(f"{path}.apiGroup", "FieldValueNotSupported",
                                       'supported values: "rbac.authorization.k8s.io"',
                                       subject.get("apiGroup") or ""))
        else:
            errs.append(FieldError(f"{path}.kind", "FieldValueNotSupported",
                                   'supported values: "ServiceAccount", "User", "Group"',
                                   kind or ""))
    return errs


def _validate_event(obj: Mapping[str, Any]) -> list[FieldError]:
    """legacyValidateEvent: an event's involvedObject must sit in the event's namespace."""
    errs: list[FieldError] = []
    ns = obj["metadata"].get("namespace") or ""
    involved_ns = (obj.get("involvedObject") or {}).get("namespace") or ""
    if not obj.get("eventTime"):
        if not involved_ns:
            if ns not in ("", "default"):
                errs.append(_invalid("involvedObject.namespace", involved_ns,
                                     "does not match event.namespace"))
        elif ns != involved_ns:
            errs.append(_invalid("involvedObject.namespace", involved_ns,
                                 "does not match event.namespace"))
        return errs
    if not involved_ns and ns not in ("default", "kube-system"):
        errs.append(_invalid("involvedObject.namespace", involved_ns,
                             "does not match event.namespace"))
    for field in ("reportingComponent", "reportingInstance", "action", "reason"):
        if not obj.get(field):
            errs.append(_required(field))
    return errs


def _validate_lease(obj: Mapping[str, Any]) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errs: list[FieldError] = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        errs.append(_invalid("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        errs.append(_invalid("spec.leaseTransitions", transitions,
                             "must be greater than or equal to 0"))
    return errs


def validate(resource: Resource, obj: Mapping[str, Any]) -> list[FieldError]:
    """Errors for a create (and, with validate_update, an update)."""
    errs = _validate_meta(resource, obj["metadata"])
    kind = resource.kind
    if kind == "ConfigMap":
        errs += _validate_data_keys(obj, ("data", "binaryData"))
    elif kind == "Secret":
        errs += _validate_data_keys(obj, ("data",))
        if obj.get("type") == "kubernetes.io/service-account-token" and not (
            obj["metadata"].get("annotations") or {}
        ).get("kubernetes.io/service-account.name"):
            errs.append(_required("metadata.annotations[kubernetes.io/service-account.name]"))
    elif kind == "Event":
        errs += _validate_event(obj)
    elif kind == "Lease":
        errs += _validate_lease(obj)
    elif kind in ("Role", "ClusterRole"):
        errs += _validate_rules(obj, resource.namespaced)
    elif kind in ("RoleBinding", "ClusterRoleBinding"):
        errs += _validate_binding(obj, resource.namespaced)
    return errs


def validate_update(
    resource: Resource, new: Mapping[str, Any], old: Mapping[str, Any]
) -> list[FieldError]:
    errs = validate(resource, new)
    kind = resource.kind
    if kind in ("ConfigMap", "Secret") and old.get("immutable"):
        if new.get("immutable") is not True:
            errs.append(FieldError("immutable", "FieldValueForbidden",
                                   "field is immutable when `immutable` is set"))
        for field in ("data", "binaryData"):
            if (new.get(field) or {}) != (old.get(field) or {}):
                errs.append(FieldError(field, "FieldValueForbidden",
                                       "field is immutable when `immutable` is set"))
    if kind == "Secret" and new.get("type") != old.get("type"):
        errs.append(_invalid("type", new.get("type"), "field is immutable"))
    if kind in ("RoleBinding", "ClusterRoleBinding") and new.get("roleRef") != old.get("roleRef"):
        errs.append(_invalid("roleRef", GoValue(_go_struct(new.get("roleRef") or {})),
                             "cannot change roleRef"))
    return errs


def _go_struct(ref: Mapping[str, Any]) -> str:
    return (f'rbac.RoleRef{{APIGroup:"{ref.get("apiGroup", "")}", Kind:"{ref.get("kind", "")}", '
            f'Name:"{ref.get("name", "")}"}}')
