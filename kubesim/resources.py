"""The served resources: the single table routing, discovery, tables and RBAC read from."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "RESOURCES",
    "Resource",
    "Subresource",
    "find",
    "group_versions",
    "lookup",
]

_ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_READ_ONLY = ("get", "list")


@dataclass(frozen=True, slots=True)
class Subresource:
    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class Resource:
    """One REST resource (a group/version/plural) and the rules its strategy follows."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    verbs: tuple[str, ...] = _ALL_VERBS
    short_names: tuple[str, ...] = ()
    name_rule: str = "subdomain"
    """How metadata.name is validated: "subdomain", "label" or "path-segment"."""
    create_on_update: bool = False
    """The strategy's AllowCreateOnUpdate: PUT to a missing object creates it."""
    unconditional_update: bool = True
    """The strategy's AllowUnconditionalUpdate: PUT without resourceVersion is allowed."""
    storage: str = ""
    """Store bucket; events.k8s.io/v1 events share core events' bucket, as in the real server."""
    field_labels: tuple[str, ...] = ()
    """Field selector labels beyond metadata.name / metadata.namespace."""
    subresources: tuple[Subresource, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def api_version(self) -> str:
        return self.group_version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """``configmaps`` or ``leases.coordination.k8s.io``: the GroupResource string."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def bucket(self) -> str:
        return self.storage or self.qualified

    def supports(self, verb: str) -> bool:
        return verb in self.verbs


_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

RESOURCES: tuple[Resource, ...] = (
    Resource(
        "", "v1", "Namespace", "namespaces", "namespace", False,
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
        short_names=("ns",), name_rule="label", field_labels=("status.phase",),
    ),
    Resource("", "v1", "ConfigMap", "configmaps", "configmap", True, short_names=("cm",)),
    Resource(
        "", "v1", "Endpoints", "endpoints", "endpoints", True,
        short_names=("ep",), create_on_update=True,
    ),
    Resource(
        "", "v1", "Event", "events", "event", True,
        short_names=("ev",), create_on_update=True, field_labels=_EVENT_FIELDS,
    ),
    Resource(
        "", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", True,
        short_names=("sa",),
        subresources=(
            Subresource("token", "TokenRequest", ("create",), "authentication.k8s.io", "v1"),
        ),
    ),
    Resource("", "v1", "Secret", "secrets", "secret", True, field_labels=("type",)),
    Resource(
        "", "v1", "ComponentStatus", "componentstatuses", "componentstatus", False,
        verbs=_READ_ONLY, short_names=("cs",),
    ),
    Resource(
        "coordination.k8s.io", "v1", "Lease", "leases", "lease", True,
        create_on_update=True, unconditional_update=False,
    ),
    Resource(
        "events.k8s.io", "v1", "Event", "events", "event", True,
        short_names=("ev",), create_on_update=True, storage="events",
        field_labels=_EVENT_FIELDS,
    ),
    Resource(
        "rbac.authorization.k8s.io", "v1", "Role", "roles", "role", True,
        name_rule="path-segment", create_on_update=True,
    ),
    Resource(
        "rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", True,
        name_rule="path-segment", create_on_update=True,
    ),
    Resource(
        "rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", False,
        name_rule="path-segment", create_on_update=True,
    ),
    Resource(
        "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings",
        "clusterrolebinding", False, name_rule="path-segment", create_on_update=True,
    ),
)

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}


def lookup(group: str, version: str, plural: str) -> Resource | None:
    """The resource served at ``/api[s]/<group>/<version>/<plural>``, if any."""
    return _BY_PATH.get((group, version, plural))


def find(name: str) -> Resource:
    """Resolve ``configmaps``, ``cm``, ``leases.coordination.k8s.io`` or ``Lease`` (core first).

    For callers in Python (runner, benchmarks); raises KeyError naming the unknown resource.
    """
    for r in RESOURCES:
        if name in (r.qualified, r.kind):
            return r
    for r in RESOURCES:
        if name in (r.plural, r.singular, *r.short_names):
            return r
    raise KeyError(f"kubesim serves no resource named {name!r}")


def group_versions() -> list[tuple[str, str]]:
    """(group, version) pairs in the order discovery lists them; core ("") first."""
    seen: list[tuple[str, str]] = []
    for r in RESOURCES:
        if (r.group, r.version) not in seen:
            seen.append((r.group, r.version))
    return seen
