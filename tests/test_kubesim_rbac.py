"""kubesim's RBAC authorizer against the real server's rules and 403 wording.

Expected messages are the real server's (k8s.io/apiserver responsewriters errors_test.go
vectors, and messages seen from real clusters); no test here reads kubesim's own code to
decide what is right.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable

import pytest

from kubesim.rbac import (
    Decision,
    aggregated_rules,
    authorize,
    bootstrap_objects,
    decide,
    forbidden_message,
    forbidden_status,
)
from kubesim.requestinfo import RequestInfo, UserInfo

RBAC = "rbac.authorization.k8s.io"
SA_NAME = "system:serviceaccount:default:datadog-agent"
SA = UserInfo(
    SA_NAME, ("system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated")
)
ALICE = UserInfo("alice", ("devs", "system:authenticated"))
ANONYMOUS = UserInfo("system:anonymous", ("system:unauthenticated",))
ADMIN = UserInfo("kubesim-admin", ("system:masters", "system:authenticated"))


# ---- request and object builders ------------------------------------------------------


def res(verb, resource, *, ns="", name="", group="", sub="") -> RequestInfo:
    prefix = f"/apis/{group}/v1" if group else "/api/v1"
    parts = [prefix, f"namespaces/{ns}" if ns else "", resource, name, sub]
    path = "/".join(p.strip("/") for p in parts if p)
    return RequestInfo(
        is_resource_request=True,
        verb=verb,
        path="/" + path,
        api_group=group,
        api_version="v1",
        namespace=ns,
        resource=resource,
        subresource=sub,
        name=name,
    )


def url(verb, path) -> RequestInfo:
    return RequestInfo(is_resource_request=False, verb=verb, path=path)


def rule(verbs, resources=(), groups=("",), names=(), urls=()) -> dict:
    out: dict = {"verbs": list(verbs)}
    if resources:
        out["apiGroups"] = list(groups)
        out["resources"] = list(resources)
    if names:
        out["resourceNames"] = list(names)
    if urls:
        out["nonResourceURLs"] = list(urls)
    return out


def meta(name, ns=None, labels=None) -> dict:
    out: dict = {"name": name}
    if ns:
        out["namespace"] = ns
    if labels:
        out["labels"] = labels
    return out


def cluster_role(name, *rules, labels=None, aggregation=None) -> dict:
    obj = {"kind": "ClusterRole", "metadata": meta(name, labels=labels), "rules": list(rules)}
    if aggregation is not None:
        obj["aggregationRule"] = {"clusterRoleSelectors": aggregation}
    return obj


def role(ns, name, *rules) -> dict:
    return {"kind": "Role", "metadata": meta(name, ns), "rules": list(rules)}


def crb(name, role_name, *subjects, role_kind="ClusterRole") -> dict:
    return {
        "kind": "ClusterRoleBinding",
        "metadata": meta(name),
        "subjects": list(subjects),
        "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": role_name},
    }


def rb(ns, name, role_name, *subjects, role_kind="ClusterRole") -> dict:
    return {
        "kind": "RoleBinding",
        "metadata": meta(name, ns),
        "subjects": list(subjects),
        "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": role_name},
    }


def sa(name, ns=None) -> dict:
    out = {"kind": "ServiceAccount", "name": name}
    if ns is not None:
        out["namespace"] = ns
    return out


def user(name) -> dict:
    return {"kind": "User", "apiGroup": RBAC, "name": name}


def group(name) -> dict:
    return {"kind": "Group", "apiGroup": RBAC, "name": name}


PLURAL = {
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
}


class Store:
    """Stored RBAC objects behind the lister interface the server passes in."""

    def __init__(self, *objects: dict, bootstrap: bool = True) -> None:
        self.objects = [*(bootstrap_objects() if bootstrap else []), *objects]
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, plural: str, namespace: str | None) -> Iterable[dict]:
        self.calls.append((plural, namespace))
        return [
            o
            for o in self.objects
            if PLURAL[o["kind"]] == plural
            and (namespace is None or o["metadata"].get("namespace") == namespace)
        ]


def allowed(store: Store, who: UserInfo, info: RequestInfo) -> bool:
    return authorize(who, info, store)


# ---- what every identity has by default ---------------------------------------------


@pytest.mark.parametrize(
    "path", ["/version", "/version/", "/readyz", "/livez", "/healthz", "/api", "/api/v1",
             "/apis", "/apis/coordination.k8s.io/v1", "/openapi/v2", "/openapi/v3/api/v1",
             "/.well-known/openid-configuration", "/openid/v1/jwks"],
)  # fmt: skip
def test_a_service_account_without_bindings_may_discover_and_probe_health(path):
    assert allowed(Store(), SA, url("get", path))


@pytest.mark.parametrize("path", ["/metrics", "/readyz/etcd", "/livez/ping", "/logs", "/"])
def test_paths_outside_the_default_roles_are_denied(path):
    # The real system:discovery grants "/readyz" exactly, not "/readyz/*".
    assert not allowed(Store(), SA, url("get", path))


def test_a_service_account_without_bindings_may_only_review_itself():
    store = Store()
    for resource in ("selfsubjectaccessreviews", "selfsubjectrulesreviews"):
        assert allowed(store, SA, res("create", resource, group="authorization.k8s.io"))
    assert allowed(store, SA, res("create", "selfsubjectreviews", group="authentication.k8s.io"))
    review = res("create", "subjectaccessreviews", group="authorization.k8s.io")
    assert not allowed(store, SA, review)
    checks = [
        res(verb, resource, ns=ns, group=grp, name=name)
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete",
                     "deletecollection")
        for resource, grp in (("configmaps", ""), ("events", ""), ("endpoints", ""),
                              ("componentstatuses", ""), ("leases", "coordination.k8s.io"),
                              ("events", "events.k8s.io"), ("clusterroles", RBAC))
        for ns in ("", "default")
        for name in ("", "datadogtoken")
    ]  # fmt: skip
    assert [c for c in checks if allowed(store, SA, c)] == []


def test_anonymous_gets_health_and_version_but_not_discovery():
    store = Store()
    assert allowed(store, ANONYMOUS, url("get", "/version"))
    assert allowed(store, ANONYMOUS, url("get", "/readyz"))
    assert not allowed(store, ANONYMOUS, url("get", "/api"))
    assert not allowed(store, ANONYMOUS, url("get", "/openid/v1/jwks"))
    assert not allowed(
        store, ANONYMOUS, res("create", "selfsubjectaccessreviews", group="authorization.k8s.io")
    )


def test_system_masters_is_allowed_everything_before_rbac_is_read():
    def no_objects(plural, namespace):
        raise AssertionError(f"RBAC consulted for a superuser: {plural}")

    for info in (res("delete", "namespaces", name="kube-system"), url("post", "/anything")):
        assert decide(ADMIN, info, no_objects) == Decision(True)


def test_the_cluster_admin_role_grants_everything_through_rbac():
    carol = UserInfo("carol", ("system:authenticated",))
    store = Store(crb("carol-admin", "cluster-admin", user("carol")))
    assert allowed(store, carol, res("deletecollection", "secrets", ns="kube-system"))
    assert allowed(store, carol, res("create", "pods", ns="x", name="p", sub="eviction"))
    assert allowed(store, carol, url("put", "/whatever/deep"))
    assert not allowed(Store(), carol, res("get", "secrets", ns="kube-system", name="s"))


# ---- rule matching ------------------------------------------------------------------


def granted(*rules) -> Store:
    return Store(cluster_role("r", *rules), crb("b", "r", sa("datadog-agent", "default")))


def test_verbs_match_exactly_or_by_star():
    store = granted(rule(["get", "watch"], ["configmaps"]))
    assert allowed(store, SA, res("get", "configmaps", ns="default", name="x"))
    assert allowed(store, SA, res("watch", "configmaps", ns="default"))
    assert not allowed(store, SA, res("list", "configmaps", ns="default"))
    assert not allowed(store, SA, res("GET", "configmaps", ns="default", name="x"))
    star = granted(rule(["*"], ["configmaps"]))
    for verb in ("delete", "deletecollection", "patch", "escalate"):
        assert allowed(star, SA, res(verb, "configmaps", ns="default"))


def test_api_groups_match_exactly_or_by_star():
    store = granted(rule(["get"], ["leases"], groups=["coordination.k8s.io"]))
    assert allowed(store, SA, res("get", "leases", ns="default", group="coordination.k8s.io"))
    assert not allowed(store, SA, res("get", "leases", ns="default"))
    core = granted(rule(["get"], ["events"], groups=[""]))
    assert allowed(core, SA, res("get", "events", ns="default"))
    assert not allowed(core, SA, res("get", "events", ns="default", group="events.k8s.io"))
    star = granted(rule(["get"], ["events"], groups=["*"]))
    assert allowed(star, SA, res("get", "events", ns="default", group="events.k8s.io"))
    assert allowed(star, SA, res("get", "events", ns="default"))
    no_groups = granted({"verbs": ["get"], "resources": ["events"]})
    assert not allowed(no_groups, SA, res("get", "events", ns="default"))


def test_resources_match_exactly_by_star_and_by_star_slash_subresource():
    plain = granted(rule(["get"], ["pods"]))
    assert allowed(plain, SA, res("get", "pods", ns="default", name="p"))
    assert not allowed(plain, SA, res("get", "pods", ns="default", name="p", sub="log"))
    sub = granted(rule(["get"], ["pods/log"]))
    assert allowed(sub, SA, res("get", "pods", ns="default", name="p", sub="log"))
    assert not allowed(sub, SA, res("get", "pods", ns="default", name="p"))
    assert not allowed(sub, SA, res("get", "pods", ns="default", name="p", sub="status"))
    star = granted(rule(["get"], ["*"]))
    assert allowed(star, SA, res("get", "pods", ns="default", name="p", sub="log"))
    assert allowed(star, SA, res("get", "configmaps", ns="default", name="c"))
    any_status = granted(rule(["update"], ["*/status"]))
    assert allowed(any_status, SA, res("update", "pods", ns="default", name="p", sub="status"))
    assert allowed(any_status, SA, res("update", "nodes", name="n", sub="status"))
    assert not allowed(any_status, SA, res("update", "pods", ns="default", name="p"))
    assert not allowed(any_status, SA, res("update", "pods", ns="default", name="p", sub="log"))


def test_resource_slash_star_is_not_a_wildcard_in_the_real_server():
    store = granted(rule(["get"], ["pods/*"]))
    assert not allowed(store, SA, res("get", "pods", ns="default", name="p", sub="log"))
    assert not allowed(store, SA, res("get", "pods", ns="default", name="p"))


def test_resource_names_limit_named_requests_only():
    store = granted(
        rule(["get", "update", "list", "watch", "create", "delete", "deletecollection"],
             ["configmaps"], names=["datadogtoken"])
    )  # fmt: skip
    token = {"ns": "default", "name": "datadogtoken"}
    for verb in ("get", "update", "delete"):
        assert allowed(store, SA, res(verb, "configmaps", **token))
        assert not allowed(store, SA, res(verb, "configmaps", ns="default", name="other"))
    # A POST carries no name, so create can never be limited by resourceNames.
    assert not allowed(store, SA, res("create", "configmaps", ns="default"))
    assert not allowed(store, SA, res("list", "configmaps", ns="default"))
    assert not allowed(store, SA, res("watch", "configmaps", ns="default"))
    assert not allowed(store, SA, res("deletecollection", "configmaps", ns="default"))
    # The real request parser names a list/watch whose fieldSelector is metadata.name=<n>.
    assert allowed(store, SA, res("list", "configmaps", **token))
    assert allowed(store, SA, res("watch", "configmaps", **token))


def test_non_resource_urls_exact_star_and_prefix():
    store = granted(
        rule(["get"], urls=["/metrics", "/healthz/*", "/api*"]),
        rule(["post"], urls=["/webhook"]),
    )
    assert allowed(store, SA, url("get", "/metrics"))
    assert not allowed(store, SA, url("get", "/metrics/slis"))
    assert allowed(store, SA, url("get", "/healthz/etcd"))
    assert allowed(store, SA, url("get", "/healthz/"))
    assert allowed(store, SA, url("get", "/apis/anything"))
    assert allowed(store, SA, url("post", "/webhook"))
    assert not allowed(store, SA, url("get", "/webhook"))
    assert not allowed(store, SA, url("put", "/metrics"))
    everything = granted(rule(["get"], urls=["*"]))
    assert allowed(everything, SA, url("get", "/any/path"))
    assert not allowed(everything, SA, url("delete", "/any/path"))


def test_resource_rules_and_url_rules_do_not_cross():
    store = granted(rule(["get"], ["*"], groups=["*"]))
    assert not allowed(store, SA, url("get", "/metrics"))
    urls = granted(rule(["get"], urls=["*"]))
    assert not allowed(urls, SA, res("get", "configmaps", ns="default", name="x"))


# ---- bindings and subjects ------------------------------------------------------------


def test_a_role_binding_to_a_cluster_role_grants_only_in_its_namespace():
    store = Store(
        cluster_role("reader", rule(["get", "list"], ["configmaps", "componentstatuses"])),
        rb("default", "read", "reader", sa("datadog-agent")),
    )
    assert allowed(store, SA, res("list", "configmaps", ns="default"))
    assert not allowed(store, SA, res("list", "configmaps", ns="kube-system"))
    assert not allowed(store, SA, res("list", "configmaps"))  # all namespaces
    assert not allowed(store, SA, res("list", "componentstatuses"))  # cluster-scoped


def test_a_role_binding_to_a_role_reads_the_role_of_its_namespace():
    store = Store(
        role("default", "token", rule(["get"], ["configmaps"])),
        role("other", "token", rule(["*"], ["*"], groups=["*"])),
        rb("default", "token", "token", sa("datadog-agent"), role_kind="Role"),
    )
    assert allowed(store, SA, res("get", "configmaps", ns="default", name="x"))
    assert not allowed(store, SA, res("update", "configmaps", ns="default", name="x"))


def test_a_cluster_role_binding_grants_in_every_namespace_and_cluster_wide():
    store = granted(rule(["list", "watch"], ["events"]), rule(["list"], ["componentstatuses"]))
    assert allowed(store, SA, res("watch", "events"))
    assert allowed(store, SA, res("list", "events", ns="kube-system"))
    assert allowed(store, SA, res("list", "componentstatuses"))


def test_service_account_subjects_match_on_the_full_user_name():
    reader = cluster_role("reader", rule(["get"], ["configmaps"]))
    info = res("get", "configmaps", ns="default", name="x")
    assert allowed(Store(reader, crb("b", "reader", sa("datadog-agent", "default"))), SA, info)
    assert not allowed(Store(reader, crb("b", "reader", sa("datadog-agent", "kube"))), SA, info)
    assert not allowed(Store(reader, crb("b", "reader", sa("datadog", "default"))), SA, info)
    # Without a namespace a ClusterRoleBinding's SA subject matches no one ...
    assert not allowed(Store(reader, crb("b", "reader", sa("datadog-agent"))), SA, info)
    # ... and a RoleBinding's means the binding's own namespace.
    assert allowed(Store(reader, rb("default", "b", "reader", sa("datadog-agent"))), SA, info)
    longer = UserInfo(SA_NAME + "-x", SA.groups)
    assert not allowed(Store(reader, crb("b", "reader", sa("datadog-agent", "default"))), longer,
                       info)  # fmt: skip


def test_user_and_group_subjects():
    reader = cluster_role("reader", rule(["get"], ["configmaps"]))
    info = res("get", "configmaps", ns="default", name="x")
    assert allowed(Store(reader, crb("b", "reader", user("alice"))), ALICE, info)
    assert not allowed(Store(reader, crb("b", "reader", user("alice"))), SA, info)
    assert not allowed(Store(reader, crb("b", "reader", user(SA_NAME[:-1]))), SA, info)
    assert allowed(Store(reader, crb("b", "reader", group("devs"))), ALICE, info)
    every_sa_of_default = crb("b", "reader", group("system:serviceaccounts:default"))
    assert allowed(Store(reader, every_sa_of_default), SA, info)
    assert not allowed(Store(reader, every_sa_of_default), ALICE, info)
    odd = crb("b", "reader", {"kind": "Robot", "name": "alice"}, {"name": "alice"})
    assert not allowed(Store(reader, odd), ALICE, info)


def test_any_of_several_subjects_and_any_of_several_bindings():
    store = Store(
        cluster_role("a", rule(["get"], ["configmaps"])),
        cluster_role("b", rule(["list"], ["configmaps"])),
        crb("x", "a", user("nobody"), sa("datadog-agent", "default")),
        rb("default", "y", "b", group("nobody"), group("system:serviceaccounts")),
    )
    assert allowed(store, SA, res("get", "configmaps", ns="default", name="x"))
    assert allowed(store, SA, res("list", "configmaps", ns="default"))
    assert not allowed(store, SA, res("watch", "configmaps", ns="default"))


def test_role_bindings_are_read_only_when_needed():
    store = granted(rule(["get"], ["configmaps"]))
    assert allowed(store, SA, res("get", "configmaps", ns="default", name="x"))
    assert ("rolebindings", "default") not in store.calls  # a ClusterRoleBinding sufficed
    store.calls.clear()
    assert not allowed(store, SA, res("list", "componentstatuses"))
    assert [p for p, _ in store.calls] == ["clusterrolebindings", "clusterroles"]
    store.calls.clear()
    assert not allowed(store, SA, res("list", "configmaps", ns="default"))
    assert ("rolebindings", "default") in store.calls


# ---- resolution errors become the denial's reason -------------------------------------


def test_a_missing_role_grants_nothing_and_becomes_the_reason():
    store = Store(crb("b", "kube-state-metrics", sa("datadog-agent", "default")))
    decision = decide(SA, res("list", "deployments", group="apps"), store)
    assert decision == Decision(
        False, 'RBAC: clusterrole.rbac.authorization.k8s.io "kube-state-metrics" not found'
    )


def test_several_resolution_errors_are_listed_once_each():
    store = Store(
        crb("b1", "gone", sa("datadog-agent", "default")),
        crb("b2", "gone", group("system:authenticated")),
        rb("default", "b3", "missing", sa("datadog-agent"), role_kind="Role"),
        rb("default", "b4", "x", user(SA_NAME), role_kind="Thing"),
        crb("b5", "not-mine", user("alice")),  # does not apply: no error from it
    )
    decision = decide(SA, res("get", "configmaps", ns="default", name="x"), store)
    assert decision.reason == (
        "RBAC: [clusterrole.rbac.authorization.k8s.io \"gone\" not found, "
        "role.rbac.authorization.k8s.io \"missing\" not found, "
        "unsupported role reference kind: \"Thing\"]"
    )
    single = Store(
        crb("b1", "gone", user(SA_NAME)), crb("b2", "gone", group("system:authenticated"))
    )
    assert decide(SA, res("list", "pods"), single).reason == (
        'RBAC: clusterrole.rbac.authorization.k8s.io "gone" not found'
    )


def test_a_cluster_role_binding_cannot_use_a_role():
    store = Store(
        role("default", "r", rule(["get"], ["configmaps"])),
        crb("b", "r", sa("datadog-agent", "default"), role_kind="Role"),
    )
    decision = decide(SA, res("get", "configmaps", ns="default", name="x"), store)
    assert decision == Decision(False, 'RBAC: role.rbac.authorization.k8s.io "r" not found')


def test_an_allowed_request_ignores_errors_and_names_its_source():
    store = Store(
        crb("broken", "gone", sa("datadog-agent", "default")),
        cluster_role("reader", rule(["get"], ["configmaps"])),
        rb("default", "read", "reader", sa("datadog-agent")),
    )
    decision = decide(SA, res("get", "configmaps", ns="default", name="x"), store)
    assert decision.allowed
    assert decision.reason == (
        'RBAC: allowed by RoleBinding "read/default" of ClusterRole "reader" '
        'to ServiceAccount "datadog-agent/default"'
    )


def test_malformed_stored_objects_deny_without_crashing():
    store = Store(
        cluster_role("r", {"verbs": "get", "apiGroups": [""], "resources": ["configmaps"]},
                     {"verbs": ["get"], "apiGroups": "", "resources": "configmaps"}, "junk"),
        crb("b", "r", sa("datadog-agent", "default")),
        {"kind": "ClusterRoleBinding", "metadata": {"name": "odd"}, "subjects": None},
        {"kind": "ClusterRoleBinding", "metadata": {}, "subjects": [user(SA_NAME)]},
    )  # fmt: skip
    decision = decide(SA, res("get", "configmaps", ns="default", name="x"), store)
    assert decision == Decision(False, 'RBAC: unsupported role reference kind: ""')


# ---- aggregated ClusterRoles ------------------------------------------------------------


def test_an_aggregated_cluster_role_grants_the_rules_of_the_roles_it_selects():
    label = {"example.com/aggregate-to-monitoring": "true"}
    store = Store(
        cluster_role("monitoring", rule(["delete"], ["*"], groups=["*"]),
                     aggregation=[{"matchLabels": label}]),
        cluster_role("events-reader", rule(["list", "watch"], ["events"]), labels=label),
        cluster_role("cs-reader", rule(["list"], ["componentstatuses"]),
                     labels={**label, "tier": "cp"}),
        cluster_role("unrelated", rule(["get"], ["secrets"])),
        crb("b", "monitoring", sa("datadog-agent", "default")),
    )  # fmt: skip
    assert allowed(store, SA, res("watch", "events"))
    assert allowed(store, SA, res("list", "componentstatuses"))
    assert not allowed(store, SA, res("get", "secrets", ns="default", name="s"))
    # Stored rules of an aggregated role are the controller's to overwrite: not granted.
    assert not allowed(store, SA, res("delete", "configmaps", ns="default", name="x"))


def test_aggregation_with_expressions_nesting_cycles_and_bad_selectors():
    roles = [
        cluster_role("top", aggregation=[{"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "skip", "operator": "DoesNotExist"}]}]),
        cluster_role("mid", labels={"tier": "a"}, aggregation=[{"matchLabels": {"leaf": "y"}}]),
        cluster_role("leaf", rule(["get"], ["pods"]), labels={"leaf": "y"}),
        cluster_role("b", rule(["get"], ["nodes"]), labels={"tier": "b"}),
        cluster_role("skipped", rule(["get"], ["secrets"]), labels={"tier": "b", "skip": ""}),
        cluster_role("loop", labels={"tier": "a"}, aggregation=[{"matchLabels": {"tier": "a"}}]),
    ]  # fmt: skip
    by_name = {r["metadata"]["name"]: r for r in roles}
    assert aggregated_rules(by_name["top"], roles) == [
        rule(["get"], ["nodes"]),
        rule(["get"], ["pods"]),
    ]
    assert aggregated_rules(by_name["loop"], roles) == [rule(["get"], ["pods"])]
    everything = cluster_role("all", aggregation=[{}])
    assert len(aggregated_rules(everything, [*roles, everything])) == 3
    bad = cluster_role("bad", rule(["get"], ["x"]),
                       aggregation=[{"matchExpressions": [{"key": "k", "operator": "Is"}]}])
    assert aggregated_rules(bad, roles) == [rule(["get"], ["x"])]
    empty = cluster_role("empty", rule(["get"], ["x"]), aggregation=[])
    assert aggregated_rules(empty, roles) == []
    assert aggregated_rules(by_name["leaf"], roles) == [rule(["get"], ["pods"])]


# ---- the agent's least-privilege ClusterRole (issue 7) ---------------------------------


def agent_store(*drop: int) -> Store:
    rules = [
        rule(["list", "watch"], ["events"]),
        rule(["list"], ["componentstatuses"]),
        rule(["get", "update"], ["configmaps"], names=["datadogtoken"]),
        rule(["get", "update"], ["endpoints"], names=["datadog-leader-election"]),
        rule(["create"], ["configmaps", "endpoints"]),
        rule(["get"], urls=["/readyz", "/livez", "/version"]),
    ]
    kept = [r for i, r in enumerate(rules) if i not in drop]
    return Store(
        cluster_role("datadog-agent", *kept),
        crb("datadog-agent", "datadog-agent", sa("datadog-agent", "default")),
    )


AGENT_NEEDS = {
    "watch events": res("watch", "events"),
    "list events": res("list", "events"),
    "list componentstatuses": res("list", "componentstatuses"),
    "get token": res("get", "configmaps", ns="default", name="datadogtoken"),
    "update token": res("update", "configmaps", ns="default", name="datadogtoken"),
    "get lock": res("get", "endpoints", ns="default", name="datadog-leader-election"),
    "update lock": res("update", "endpoints", ns="default", name="datadog-leader-election"),
    "create configmap": res("create", "configmaps", ns="default"),
    "create endpoints": res("create", "endpoints", ns="default"),
}


def test_the_agent_role_grants_what_the_agent_needs_and_no_more():
    store = agent_store()
    assert [k for k, info in AGENT_NEEDS.items() if not allowed(store, SA, info)] == []
    beyond = [
        res("get", "configmaps", ns="default", name="other"),
        res("update", "endpoints", ns="default", name="kube-scheduler"),
        res("list", "configmaps", ns="default"),
        res("delete", "configmaps", ns="default", name="datadogtoken"),
        res("patch", "configmaps", ns="default", name="datadogtoken"),
        res("get", "events", ns="default", name="e"),
        res("create", "leases", ns="default", group="coordination.k8s.io"),
        res("list", "events", group="events.k8s.io"),
        res("get", "secrets", ns="default", name="datadog-api-key"),
    ]
    assert [i for i in beyond if allowed(store, SA, i)] == []


@pytest.mark.parametrize("index", range(5))
def test_removing_one_agent_rule_denies_a_specific_need(index):
    lost = [k for k, info in AGENT_NEEDS.items() if not allowed(agent_store(index), SA, info)]
    assert lost, f"rule {index} grants nothing the defaults do not"


def test_the_agent_url_rule_is_already_granted_by_the_default_discovery_role():
    # On a real cluster system:discovery gives every authenticated user these paths, so
    # dropping this rule from the agent's ClusterRole changes nothing.
    store = agent_store(5)
    assert all(allowed(store, SA, url("get", p)) for p in ("/readyz", "/livez", "/version"))


# ---- the 403 message ----------------------------------------------------------------------


def test_message_for_a_named_namespaced_object():
    info = res("update", "configmaps", ns="default", name="datadogtoken")
    assert forbidden_message(SA, info) == (
        'configmaps "datadogtoken" is forbidden: User '
        '"system:serviceaccount:default:datadog-agent" cannot update resource "configmaps" '
        'in API group "" in the namespace "default"'
    )


def test_message_for_a_list_without_a_name_and_at_the_cluster_scope():
    assert forbidden_message(SA, res("list", "pods", ns="default")) == (
        'pods is forbidden: User "system:serviceaccount:default:datadog-agent" cannot list '
        'resource "pods" in API group "" in the namespace "default"'
    )
    assert forbidden_message(SA, res("list", "namespaces")) == (
        'namespaces is forbidden: User "system:serviceaccount:default:datadog-agent" cannot '
        'list resource "namespaces" in API group "" at the cluster scope'
    )


def test_message_for_a_group_resource_and_a_reason():
    info = res("list", "deployments", group="apps")
    reason = 'RBAC: clusterrole.rbac.authorization.k8s.io "kube-state-metrics" not found'
    who = UserInfo("system:serviceaccount:monitor:kube-state-metrics")
    assert forbidden_message(who, info, reason) == (
        'deployments.apps is forbidden: User "system:serviceaccount:monitor:kube-state-metrics"'
        ' cannot list resource "deployments" in API group "apps" at the cluster scope: RBAC: '
        'clusterrole.rbac.authorization.k8s.io "kube-state-metrics" not found'
    )
    lease = res("get", "leases", ns="default", name="lock", group="coordination.k8s.io")
    assert forbidden_message(SA, lease).startswith(
        'leases.coordination.k8s.io "lock" is forbidden: User'
    )


def test_message_for_a_non_resource_path():
    assert forbidden_message(UserInfo("x"), url("get", "/readyz")) == (
        'forbidden: User "x" cannot get path "/readyz"'
    )


# Vectors of k8s.io/apiserver .../responsewriters/errors_test.go TestForbidden (Go's JSON
# encoder writes & as \u0026; json.loads undoes that, so bodies are compared as data).
UPSTREAM = [
    (
        url("GET", "/whatever"),
        r'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":'
        r'"forbidden: User \"NAME\" cannot GET path \"/whatever\"","reason":"Forbidden",'
        r'"details":{},"code":403}',
    ),
    (
        url("GET", "/<script>"),
        r'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":'
        r'"forbidden: User \"NAME\" cannot GET path \"/\u0026lt;script\u0026gt;\"",'
        r'"reason":"Forbidden","details":{},"code":403}',
    ),
    (
        RequestInfo(is_resource_request=True, verb="get", path="", resource="pod"),
        r'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":'
        r'"pod is forbidden: User \"NAME\" cannot get resource \"pod\" in API group \"\" at the'
        r' cluster scope","reason":"Forbidden","details":{"kind":"pod"},"code":403}',
    ),
    (
        RequestInfo(is_resource_request=True, verb="get", path="", resource="pod", name="mypod"),
        r'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":'
        r'"pod \"mypod\" is forbidden: User \"NAME\" cannot get resource \"pod\" in API group '
        r'\"\" at the cluster scope","reason":"Forbidden","details":{"name":"mypod",'
        r'"kind":"pod"},"code":403}',
    ),
    (
        RequestInfo(is_resource_request=True, verb="get", path="", namespace="test",
                    api_group="v2", resource="pod", subresource="quota"),
        r'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":'
        r'"pod.v2 is forbidden: User \"NAME\" cannot get resource \"pod/quota\" in API group '
        r'\"v2\" in the namespace \"test\"","reason":"Forbidden","details":{"group":"v2",'
        r'"kind":"pod"},"code":403}',
    ),
]  # fmt: skip


@pytest.mark.parametrize(("info", "body"), UPSTREAM)
def test_status_bodies_match_the_upstream_test_vectors(info, body):
    status = forbidden_status(UserInfo("NAME"), info)
    expected = json.loads(body)
    assert status == expected
    assert list(status) == list(expected)
    assert list(status["details"]) == list(expected["details"])


def test_status_for_a_subresource_names_the_object_and_the_parent_kind():
    info = res("get", "pods", ns="default", name="web-1", sub="log")
    status = forbidden_status(SA, info)
    assert status["details"] == {"name": "web-1", "kind": "pods"}
    assert status["message"] == (
        'pods "web-1" is forbidden: User "system:serviceaccount:default:datadog-agent" cannot '
        'get resource "pods/log" in API group "" in the namespace "default"'
    )


def test_names_are_quoted_the_way_go_quotes_them():
    odd = UserInfo('we"ird\\name\tü\u200b\x7f')
    assert forbidden_message(odd, url("get", "/a&b")) == (
        'forbidden: User "we\\"ird\\\\name\\tü\\u200b\\x7f" cannot get path "/a&amp;b"'
    )


# ---- bootstrap policy ---------------------------------------------------------------------


def test_bootstrap_objects_are_the_real_defaults_with_their_metadata():
    objects = bootstrap_objects()
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert names == [
        ("ClusterRole", "cluster-admin"),
        ("ClusterRole", "system:discovery"),
        ("ClusterRole", "system:basic-user"),
        ("ClusterRole", "system:public-info-viewer"),
        ("ClusterRole", "system:service-account-issuer-discovery"),
        ("ClusterRoleBinding", "cluster-admin"),
        ("ClusterRoleBinding", "system:basic-user"),
        ("ClusterRoleBinding", "system:discovery"),
        ("ClusterRoleBinding", "system:public-info-viewer"),
        ("ClusterRoleBinding", "system:service-account-issuer-discovery"),
    ]
    for obj in objects:
        assert obj["apiVersion"] == "rbac.authorization.k8s.io/v1"
        assert obj["metadata"]["labels"] == {"kubernetes.io/bootstrapping": "rbac-defaults"}
        assert obj["metadata"]["annotations"] == {
            "rbac.authorization.kubernetes.io/autoupdate": "true"
        }
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert by_name["ClusterRole", "cluster-admin"]["rules"] == [
        {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
        {"verbs": ["*"], "nonResourceURLs": ["*"]},
    ]
    assert by_name["ClusterRole", "system:discovery"]["rules"] == [
        {"verbs": ["get"], "nonResourceURLs": [
            "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi",
            "/openapi/*", "/readyz", "/version", "/version/"]},
    ]  # fmt: skip
    assert by_name["ClusterRole", "system:public-info-viewer"]["rules"] == [
        {"verbs": ["get"],
         "nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"]},
    ]  # fmt: skip
    subjects = {
        name: [s["name"] for s in o["subjects"]]
        for (kind, name), o in by_name.items()
        if kind == "ClusterRoleBinding"
    }
    assert subjects == {
        "cluster-admin": ["system:masters"],
        "system:basic-user": ["system:authenticated"],
        "system:discovery": ["system:authenticated"],
        "system:public-info-viewer": ["system:authenticated", "system:unauthenticated"],
        "system:service-account-issuer-discovery": ["system:serviceaccounts"],
    }
    for (kind, name), o in by_name.items():
        if kind == "ClusterRoleBinding":
            assert o["roleRef"] == {"apiGroup": RBAC, "kind": "ClusterRole", "name": name}
            assert all(s["kind"] == "Group" and s["apiGroup"] == RBAC for s in o["subjects"])


def test_bootstrap_objects_are_fresh_on_every_call():
    first = bootstrap_objects()
    pristine = copy.deepcopy(first)
    first[0]["rules"].clear()
    first[1]["metadata"]["labels"]["x"] = "y"
    assert bootstrap_objects() == pristine
