"""RBAC authorization, decided the way kube-apiserver decides it.

What the real server does, and so what this module does (sources: k8s.io/kubernetes
``plugin/pkg/auth/authorizer/rbac/rbac.go``, ``pkg/registry/rbac/validation/rule.go``,
``pkg/apis/rbac/v1/evaluation_helpers.go``, ``pkg/controller/clusterroleaggregation``,
and k8s.io/apiserver ``endpoints/handlers/responsewriters/errors.go``):

- Members of ``system:masters`` are allowed everything, before RBAC is asked (the
  server's privileged-group authorizer).
- Every ClusterRoleBinding whose subjects include the user grants its role's rules
  everywhere; for a namespaced request, every RoleBinding *of that namespace* whose
  subjects include the user grants its Role's (or ClusterRole's) rules there only.
- Subjects: ``User`` by name, ``Group`` by membership, ``ServiceAccount`` by the user name
  ``system:serviceaccount:<ns>:<name>`` (a RoleBinding's SA subject without a namespace
  means the binding's namespace; a ClusterRoleBinding's never matches).
- A rule matches when the verb (or ``*``), the API group (or ``*``) and the resource all
  match: ``*``, the exact ``resource`` or ``resource/subresource``, or ``*/subresource``.
  ``resource/*`` is *not* a wildcard in the real server and is not one here.
  ``resourceNames`` restrict the rule to requests that carry a name: a ``get`` of a named
  object; never ``create`` (a POST has no name) or a plain ``list``/``watch``. The real
  request parser gives a ``list``/``watch`` a name when its fieldSelector requires
  ``metadata.name=<n>`` exactly, so ``resourceNames`` can grant that (the parser's job:
  this module only reads ``RequestInfo.name``).
- ``nonResourceURLs``: ``*``, exact path, or a trailing ``*`` matching by prefix.
- Aggregated ClusterRoles are supported simply: a ClusterRole with an ``aggregationRule``
  grants what the aggregation controller would write into it (the union of the rules of
  the other ClusterRoles its selectors pick), computed when it is used.
- A binding whose role cannot be found grants nothing; as in the real server the error
  becomes the denial's reason (``RBAC: clusterrole.rbac.authorization.k8s.io "x" not
  found``), which the 403 message ends with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubesim.bootstrap_policy import bootstrap_objects
from kubesim.requestinfo import RequestInfo, UserInfo

__all__ = [
    "SUPERUSER_GROUP",
    "Decision",
    "Lister",
    "aggregated_rules",
    "authorize",
    "bootstrap_objects",
    "decide",
    "forbidden_message",
    "forbidden_status",
    "rule_allows",
]

Lister = Callable[[str, str | None], Iterable[dict]]
"""``lister(plural, namespace)``: the stored clusterroles / clusterrolebindings (namespace
None) or roles / rolebindings of one namespace, as plain JSON dicts."""

SUPERUSER_GROUP = "system:masters"
_RBAC_GROUP = "rbac.authorization.k8s.io"
_SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True, slots=True)
class Decision:
    """The authorizer's answer; ``reason`` is what the real server logs or appends to a 403."""

    allowed: bool
    reason: str = ""


def authorize(user: UserInfo, info: RequestInfo, lister: Lister) -> bool:
    """True if the real API server (privileged group + RBAC) would allow this request."""
    return decide(user, info, lister).allowed


def decide(user: UserInfo, info: RequestInfo, lister: Lister) -> Decision:
    """Like :func:`authorize`, with the reason (the source that allowed, or resolution errors)."""
    if SUPERUSER_GROUP in user.groups:
        return Decision(True)
    roles = _RoleResolver(lister)
    errors: list[str] = []
    for binding, namespace in _bindings(lister, info.namespace):
        subject = _subject_for(user, binding.get("subjects"), namespace)
        if subject is None:
            continue
        role_ref = _mapping(binding.get("roleRef"))
        rules, error = roles.rules(role_ref, namespace)
        if error:
            errors.append(error)
            continue
        if any(rule_allows(info, rule) for rule in rules):
            return Decision(True, f"RBAC: allowed by {_describe(binding, namespace, subject)}")
    return Decision(False, f"RBAC: {_aggregate(errors)}" if errors else "")


def _bindings(lister: Lister, namespace: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    """ClusterRoleBindings, then (lazily, as the real resolver) the namespace's RoleBindings."""
    for binding in _objects(lister("clusterrolebindings", None)):
        yield binding, ""
    if namespace:
        for binding in _objects(lister("rolebindings", namespace)):
            yield binding, namespace


def rule_allows(info: RequestInfo, rule: Mapping[str, Any]) -> bool:
    """One PolicyRule against one request (``RuleAllows`` in the real server)."""
    if not _verb_matches(rule, info.verb):
        return False
    if not info.is_resource_request:
        return _url_matches(rule, info.path)
    combined = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
    return (
        _any_or_equal(_strings(rule, "apiGroups"), info.api_group)
        and _resource_matches(_strings(rule, "resources"), combined, info.subresource)
        and _name_matches(_strings(rule, "resourceNames"), info.name)
    )


def _verb_matches(rule: Mapping[str, Any], verb: str) -> bool:
    return _any_or_equal(_strings(rule, "verbs"), verb)


def _any_or_equal(values: Sequence[str], wanted: str) -> bool:
    return any(value in ("*", wanted) for value in values)


def _resource_matches(resources: Sequence[str], combined: str, subresource: str) -> bool:
    for resource in resources:
        if resource in ("*", combined):
            return True
        if subresource and resource == f"*/{subresource}":
            return True
    return False


def _name_matches(names: Sequence[str], name: str) -> bool:
    # An empty list means "any name"; otherwise a request without a name never matches.
    return not names or name in names


def _url_matches(rule: Mapping[str, Any], path: str) -> bool:
    for url in _strings(rule, "nonResourceURLs"):
        if url in ("*", path):
            return True
        if url.endswith("*") and path.startswith(url.rstrip("*")):
            return True
    return False


def _subject_for(user: UserInfo, subjects: Any, namespace: str) -> Mapping[str, Any] | None:
    """The first subject of a binding that is this user (``appliesTo``), or None."""
    for subject in _objects(subjects):
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "User" and name == user.name:
            return subject
        if kind == "Group" and name in user.groups:
            return subject
        if kind == "ServiceAccount":
            sa_namespace = subject.get("namespace") or namespace
            if sa_namespace and user.name == f"{_SA_PREFIX}{sa_namespace}:{name}":
                return subject
    return None


class _RoleResolver:
    """Finds the rules a roleRef names, reading each kind of object at most once."""

    def __init__(self, lister: Lister) -> None:
        self._lister = lister
        self._cluster_roles: dict[str, Mapping[str, Any]] | None = None

    def rules(self, role_ref: Mapping[str, Any], namespace: str) -> tuple[list[dict], str]:
        """(rules, "") or ([], error text worded as the real server words it)."""
        kind, name = role_ref.get("kind"), str(role_ref.get("name") or "")
        if kind == "ClusterRole":
            if self._cluster_roles is None:
                self._cluster_roles = _by_name(self._lister("clusterroles", None))
            role = self._cluster_roles.get(name)
            if role is None:
                return [], f"clusterrole.{_RBAC_GROUP} {_go_quote(name)} not found"
            return aggregated_rules(role, self._cluster_roles.values()), ""
        if kind == "Role":
            # A ClusterRoleBinding cannot use a Role: the real lookup in namespace "" fails.
            role = _by_name(self._lister("roles", namespace)).get(name) if namespace else None
            if role is None:
                return [], f"role.{_RBAC_GROUP} {_go_quote(name)} not found"
            return list(_objects(role.get("rules"))), ""
        return [], f"unsupported role reference kind: {_go_quote(str(kind or ''))}"


def aggregated_rules(
    role: Mapping[str, Any], cluster_roles: Iterable[Mapping[str, Any]]
) -> list[dict]:
    """The rules a ClusterRole grants: its own, or, if it has an ``aggregationRule``, what
    the clusterrole-aggregation controller writes into it (selected roles by name, each
    rule once, the role itself skipped). The server may store this to show it on reads."""
    return _effective_rules(role, list(_objects(cluster_roles)), frozenset())


def _effective_rules(
    role: Mapping[str, Any], pool: list[Mapping[str, Any]], seen: frozenset[str]
) -> list[dict]:
    own = list(_objects(role.get("rules")))
    aggregation = role.get("aggregationRule")
    if aggregation is None:
        return own
    name = _name(role)
    selectors = list(_objects(_mapping(aggregation).get("clusterRoleSelectors")))
    if not all(_valid_selector(s) for s in selectors):
        return own  # the controller fails on a bad selector and leaves the rules alone
    seen = seen | {name}
    picked: list[dict] = []
    for selector in selectors:
        for other in sorted(pool, key=_name):
            if _name(other) in seen or not _selector_matches(selector, _labels(other)):
                continue
            for rule in _effective_rules(other, pool, seen):
                if rule not in picked:
                    picked.append(rule)
    return picked


def _valid_selector(selector: Mapping[str, Any]) -> bool:
    for expression in _objects(selector.get("matchExpressions")):
        operator, values = expression.get("operator"), _strings(expression, "values")
        if operator in ("In", "NotIn") and not values:
            return False
        if operator in ("Exists", "DoesNotExist") and values:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def _selector_matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches everything."""
    for key, value in _mapping(selector.get("matchLabels")).items():
        if labels.get(key) != value:
            return False
    for expression in _objects(selector.get("matchExpressions")):
        key, operator = expression.get("key"), expression.get("operator")
        values = _strings(expression, "values")
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def forbidden_message(user: UserInfo, info: RequestInfo, reason: str = "") -> str:
    """The real 403 Status ``message``, byte for byte (``responsewriters.Forbidden``).

    ``reason`` is the authorizer's (:attr:`Decision.reason` of a denial), appended after
    ``": "`` when not empty, as the real server does.
    """
    detail = _sanitize(_forbidden_detail(user, info))
    if reason:
        detail = f"{detail}: {reason}"
    qualified = _qualified_resource(info)
    if not qualified:
        return f"forbidden: {detail}"
    if not info.name:
        return f"{qualified} is forbidden: {detail}"
    return f"{qualified} {_go_quote(info.name)} is forbidden: {detail}"


def forbidden_status(user: UserInfo, info: RequestInfo, reason: str = "") -> dict[str, Any]:
    """The whole 403 ``Status`` body (``errors.NewForbidden``), keys in the real order."""
    details: dict[str, str] = {}
    if info.is_resource_request:  # StatusDetails fields are omitempty, in this order
        for key, value in (("name", info.name), ("group", info.api_group), ("kind", info.resource)):
            if value:
                details[key] = value
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": forbidden_message(user, info, reason),
        "reason": "Forbidden",
        "details": details,
        "code": 403,
    }


def _forbidden_detail(user: UserInfo, info: RequestInfo) -> str:
    name, verb = _go_quote(user.name), info.verb
    if not info.is_resource_request:
        return f"User {name} cannot {verb} path {_go_quote(info.path)}"
    resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
    head = f"User {name} cannot {verb} resource {_go_quote(resource)}"
    group = f"in API group {_go_quote(info.api_group)}"
    if info.namespace:
        return f"{head} {group} in the namespace {_go_quote(info.namespace)}"
    return f"{head} {group} at the cluster scope"


def _qualified_resource(info: RequestInfo) -> str:
    """schema.GroupResource.String(); empty for a non-resource request."""
    if not info.is_resource_request:
        return ""
    if not info.api_group:
        return info.resource
    return f"{info.resource}.{info.api_group}"


def _sanitize(text: str) -> str:
    # The real server escapes what could look like HTML, and only in this part.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_GO_ESCAPES = {
    "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
    "\v": "\\v", "\\": "\\\\", '"': '\\"',
}  # fmt: skip


def _go_quote(text: str) -> str:
    """Go's ``%q`` (strconv.Quote): the real messages quote names with it."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():  # same classes as Go's unicode.IsPrint
            out.append(char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _aggregate(errors: list[str]) -> str:
    """utilerrors.NewAggregate(...).Error(): one message alone, several deduplicated in []."""
    if len(errors) == 1:
        return errors[0]
    unique = list(dict.fromkeys(errors))
    return unique[0] if len(unique) == 1 else f"[{', '.join(unique)}]"


def _describe(binding: Mapping[str, Any], namespace: str, subject: Mapping[str, Any]) -> str:
    role_ref = _mapping(binding.get("roleRef"))
    kind, name = subject.get("kind"), str(subject.get("name") or "")
    if kind == "ServiceAccount":
        name = f"{name}/{subject.get('namespace') or namespace}"
    role = f"{role_ref.get('kind')} {_go_quote(str(role_ref.get('name') or ''))}"
    if namespace:
        where = f"RoleBinding {_go_quote(f'{_name(binding)}/{namespace}')}"
    else:
        where = f"ClusterRoleBinding {_go_quote(_name(binding))}"
    return f"{where} of {role} to {kind} {_go_quote(name)}"


# Stored objects are plain JSON; tolerate odd shapes (deny) rather than crash a request.
def _objects(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(obj: Mapping[str, Any], key: str) -> Sequence[str]:
    value = obj.get(key)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _name(obj: Mapping[str, Any]) -> str:
    return str(_mapping(obj.get("metadata")).get("name") or "")


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(_mapping(obj.get("metadata")).get("labels"))


def _by_name(objects: Iterable[dict]) -> dict[str, Mapping[str, Any]]:
    return {_name(obj): obj for obj in _objects(objects)}
