"""Label and field selectors, parsed and matched like k8s.io/apimachinery's.

Label syntax: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``,
``a>1``, ``a<1``. Field syntax: ``a=b``, ``a==b``, ``a!=b`` with ``\\`` escapes. Field values
per kind follow the registry strategies' ``ToSelectableFields``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubesim.errors import ApiError, bad_request
from kubesim.resources import Resource

__all__ = [
    "FieldSelector",
    "LabelSelector",
    "Matcher",
    "object_fields",
    "parse_field_selector",
    "parse_label_selector",
]

_KEY = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?")
_TOKEN = re.compile(r"\s*(\(|\)|,|==|=|!=|!|>|<|notin\b|in\b|[^\s(),=!<>]+)")


@dataclass(frozen=True, slots=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        try:
            have, want = int(value or ""), int(self.values[0])
        except ValueError:
            return False
        return have > want if self.op == "gt" else have < want


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[_Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _label_error(selector: str, detail: str) -> ApiError:
    return bad_request(f"unable to parse requirement: {detail}: {selector!r}")


def parse_label_selector(text: str) -> LabelSelector | None:
    """None for an empty selector (matches everything)."""
    if not text.strip():
        return None
    tokens = [m.group(1) for m in _TOKEN.finditer(text)]
    if "".join(tokens) != re.sub(r"\s+", "", text):
        raise _label_error(text, "invalid characters")
    reqs: list[_Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise _label_error(text, "unexpected end of selector")
        i += 1
        return tokens[i - 1]

    while i < len(tokens):
        tok = take()
        if tok == "!":
            reqs.append(_Requirement(_check_key(take(), text), "!"))
        else:
            key = _check_key(tok, text)
            op = tokens[i] if i < len(tokens) else ","
            if op == ",":
                reqs.append(_Requirement(key, "exists"))
            elif op in ("=", "==", "!="):
                take()
                value = take() if i < len(tokens) and tokens[i] != "," else ""
                reqs.append(_Requirement(key, "!=" if op == "!=" else "=", (value,)))
            elif op in (">", "<"):
                take()
                reqs.append(_Requirement(key, "gt" if op == ">" else "lt", (take(),)))
            elif op in ("in", "notin"):
                take()
                if take() != "(":
                    raise _label_error(text, "expected '('")
                values: list[str] = []
                while True:
                    v = take()
                    if v == ")":
                        break
                    if v != ",":
                        values.append(v)
                reqs.append(_Requirement(key, op, tuple(values)))
            else:
                raise _label_error(text, f"found '{op}', expected: '=', '!=', '==', 'in', 'notin'")
        if i < len(tokens):
            if tokens[i] != ",":
                raise _label_error(text, f"found '{tokens[i]}', expected: ','")
            i += 1
    return LabelSelector(tuple(reqs))


def _check_key(key: str, text: str) -> str:
    if not _KEY.fullmatch(key):
        raise _label_error(text, f"invalid label key {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...]
    """(field, equal?, value)."""

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all((fields.get(f, "") == v) is eq for f, eq, v in self.terms)


# events.k8s.io/v1 names for the same fields (the real server converts them to core's).
_EVENTS_V1_ALIASES = {
    "regarding.kind": "involvedObject.kind",
    "regarding.namespace": "involvedObject.namespace",
    "regarding.name": "involvedObject.name",
    "regarding.uid": "involvedObject.uid",
    "regarding.apiVersion": "involvedObject.apiVersion",
    "regarding.resourceVersion": "involvedObject.resourceVersion",
    "regarding.fieldPath": "involvedObject.fieldPath",
    "reportingController": "reportingComponent",
    "deprecatedSource": "source",
}


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, escaped = [], [], False
    for ch in text:
        if escaped:
            cur.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def parse_field_selector(text: str, resource: Resource) -> FieldSelector | None:
    """None for an empty selector; 400 for syntax errors and labels the kind does not support."""
    if not text.strip():
        return None
    supported = {"metadata.name", "metadata.namespace", *resource.field_labels}
    terms: list[tuple[str, bool, str]] = []
    for part in _split_unescaped(text, ","):
        if not part:
            continue
        m = re.fullmatch(r"([^=!]+?)(==|=|!=)(.*)", part.strip(), re.S)
        if m is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = m.group(1), m.group(2), _unescape(m.group(3))
        if resource.group == "events.k8s.io":
            field = _EVENTS_V1_ALIASES.get(field, field)
        if field not in supported:
            raise bad_request(f"field label not supported: {field}")
        terms.append((field, op != "!=", value))
    return FieldSelector(tuple(terms)) if terms else None


def _event_fields(obj: Mapping[str, Any]) -> dict[str, str]:
    inv = obj.get("involvedObject") or {}
    source = (obj.get("source") or {}).get("component") or ""
    return {
        "involvedObject.kind": inv.get("kind") or "",
        "involvedObject.namespace": inv.get("namespace") or "",
        "involvedObject.name": inv.get("name") or "",
        "involvedObject.uid": inv.get("uid") or "",
        "involvedObject.apiVersion": inv.get("apiVersion") or "",
        "involvedObject.resourceVersion": inv.get("resourceVersion") or "",
        "involvedObject.fieldPath": inv.get("fieldPath") or "",
        "reason": obj.get("reason") or "",
        "reportingComponent": obj.get("reportingComponent") or "",
        "source": source or obj.get("reportingComponent") or "",
        "type": obj.get("type") or "",
    }


def object_fields(bucket: str, obj: Mapping[str, Any]) -> dict[str, str]:
    """The selectable fields of a stored object (stored form: core/v1 for events)."""
    meta = obj.get("metadata") or {}
    fields = {"metadata.name": meta.get("name", ""),
              "metadata.namespace": meta.get("namespace", "")}
    if bucket == "events":
        fields.update(_event_fields(obj))
    elif bucket == "secrets":
        fields["type"] = obj.get("type") or ""
    elif bucket == "namespaces":
        fields["status.phase"] = (obj.get("status") or {}).get("phase") or ""
    return fields


Matcher = Callable[[Any], bool]
"""Takes a stored object (kubesim.store.Stored) and says whether it is selected."""
