"""RBAC end to end: a ServiceAccount token against kubesim (TLS), through the official
client and kubectl, allowed and denied, with 403 Status bodies as the real server writes.

Expected bodies and messages are literals in the real server's wording, not computed by
kubesim's own code.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubesim.runner import KubeSim

pytestmark = pytest.mark.timeout(180)

SA_USER = "system:serviceaccount:default:datadog-agent"
RBAC = "rbac.authorization.k8s.io"

# The agent's least-privilege ClusterRole, as issue 7 describes it.
AGENT_RULES = [
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["componentstatuses"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["datadogtoken"],
     "verbs": ["get", "update"]},
    {"apiGroups": [""], "resources": ["endpoints"], "resourceNames": ["datadog-leader-election"],
     "verbs": ["get", "update"]},
    {"apiGroups": [""], "resources": ["configmaps", "endpoints"], "verbs": ["create"]},
    {"nonResourceURLs": ["/readyz", "/livez", "/version"], "verbs": ["get"]},
]  # fmt: skip

AGENT_RBAC_YAML = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: datadog-agent
rules:
- apiGroups: [""]
  resources: [events]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [componentstatuses]
  verbs: [list]
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [datadogtoken]
  verbs: [get, update]
- apiGroups: [""]
  resources: [configmaps, endpoints]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: datadog-agent
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: datadog-agent
subjects:
- kind: ServiceAccount
  name: datadog-agent
  namespace: default
"""


def forbidden(message: str, **details: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Forbidden",
        "details": details,
        "code": 403,
    }


def denied(call: Callable[[], object]) -> dict:
    """Run an official-client call that must be refused; its Status body, parsed."""
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status == 403, caught.value.body
    return json.loads(caught.value.body)


def raw_get(api: client.ApiClient, path: str) -> tuple[int, bytes]:
    params = api.param_serialize(method="GET", resource_path=path, auth_settings=["BearerToken"])
    response = api.call_api(*params)
    response.read()
    return response.status, response.data


@pytest.fixture
def sim(kubesim_tls: KubeSim) -> KubeSim:
    assert kubesim_tls.features["rbac"], "kubesim runs without kubesim.rbac"
    return kubesim_tls


@pytest.fixture
def sa_api(sim: KubeSim) -> client.ApiClient:
    return sim.api_client(sim.issue_token("default", "datadog-agent"))


def grant_agent_role(sim: KubeSim, role: str = "datadog-agent") -> None:
    rbac = client.RbacAuthorizationV1Api(sim.api_client())
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": AGENT_RULES})
    rbac.create_cluster_role_binding({
        "metadata": {"name": "datadog-agent"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "datadog-agent", "namespace": "default"}],
    })


def test_a_fresh_service_account_may_only_discover_and_probe(sim, sa_api):
    for path in ("/version", "/readyz", "/livez", "/healthz", "/api", "/apis", "/api/v1"):
        assert raw_get(sa_api, path)[0] == 200, path
    status, body = raw_get(sa_api, "/metrics")
    assert status == 403
    assert json.loads(body) == forbidden(f'forbidden: User "{SA_USER}" cannot get path "/metrics"')

    core = client.CoreV1Api(sa_api)
    assert denied(lambda: core.list_namespaced_config_map("default")) == forbidden(
        f'configmaps is forbidden: User "{SA_USER}" cannot list resource "configmaps" in API '
        'group "" in the namespace "default"',
        kind="configmaps",
    )
    assert denied(lambda: core.read_namespaced_config_map("datadogtoken", "default")) == forbidden(
        f'configmaps "datadogtoken" is forbidden: User "{SA_USER}" cannot get resource '
        '"configmaps" in API group "" in the namespace "default"',
        name="datadogtoken",
        kind="configmaps",
    )
    assert denied(lambda: core.list_component_status()) == forbidden(
        f'componentstatuses is forbidden: User "{SA_USER}" cannot list resource '
        '"componentstatuses" in API group "" at the cluster scope',
        kind="componentstatuses",
    )


def test_the_agent_role_allows_exactly_its_rules(sim, sa_api):
    admin = client.CoreV1Api(sim.api_client())
    admin.create_namespaced_config_map("default", {"metadata": {"name": "other"}})
    grant_agent_role(sim)
    core = client.CoreV1Api(sa_api)

    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "datadogtoken"}, "data": {"event.tokenKey": "0"}}
    )
    token = core.read_namespaced_config_map("datadogtoken", "default")
    token.data = {"event.tokenKey": "42"}
    core.replace_namespaced_config_map("datadogtoken", "default", token)
    assert core.list_component_status().items
    assert core.list_event_for_all_namespaces(limit=5).metadata is not None
    stream = core.list_namespaced_event("kube-system", watch=True, timeout_seconds=1,
                                        _preload_content=False)
    assert stream.status == 200
    stream.release_conn()

    assert denied(lambda: core.read_namespaced_config_map("other", "default")) == forbidden(
        f'configmaps "other" is forbidden: User "{SA_USER}" cannot get resource "configmaps" '
        'in API group "" in the namespace "default"',
        name="other",
        kind="configmaps",
    )
    assert denied(lambda: core.delete_namespaced_config_map("datadogtoken", "default"))[
        "message"
    ] == (
        f'configmaps "datadogtoken" is forbidden: User "{SA_USER}" cannot delete resource '
        '"configmaps" in API group "" in the namespace "default"'
    )
    assert denied(lambda: core.list_namespaced_config_map("default"))["details"] == {
        "kind": "configmaps"
    }
    leases = client.CoordinationV1Api(sa_api)
    lease = {"metadata": {"name": "datadog-leader-election"}}
    assert denied(lambda: leases.create_namespaced_lease("default", lease)) == forbidden(
        f'leases.coordination.k8s.io is forbidden: User "{SA_USER}" cannot create resource '
        '"leases" in API group "coordination.k8s.io" in the namespace "default"',
        group="coordination.k8s.io",
        kind="leases",
    )


def test_bindings_are_evaluated_live_and_a_missing_role_is_the_reason(sim, sa_api):
    rbac = client.RbacAuthorizationV1Api(sim.api_client())
    rbac.create_cluster_role_binding({
        "metadata": {"name": "datadog-agent"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "datadog-agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "datadog-agent", "namespace": "default"}],
    })
    core = client.CoreV1Api(sa_api)
    assert denied(lambda: core.list_component_status())["message"] == (
        f'componentstatuses is forbidden: User "{SA_USER}" cannot list resource '
        '"componentstatuses" in API group "" at the cluster scope: RBAC: '
        'clusterrole.rbac.authorization.k8s.io "datadog-agent" not found'
    )
    rbac.create_cluster_role({"metadata": {"name": "datadog-agent"}, "rules": AGENT_RULES})
    assert core.list_component_status().items
    rbac.delete_cluster_role_binding("datadog-agent")
    assert denied(lambda: core.list_component_status())["message"].endswith("cluster scope")


def test_a_role_binding_grants_in_its_namespace_and_names_allow_a_named_list(sim, sa_api):
    admin = sim.api_client()
    client.CoreV1Api(admin).create_namespaced_config_map(
        "default", {"metadata": {"name": "datadogtoken"}}
    )
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role("default", {
        "metadata": {"name": "token-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                   "resourceNames": ["datadogtoken"], "verbs": ["get", "list", "watch"]}],
    })  # fmt: skip
    rbac.create_namespaced_role_binding("default", {
        "metadata": {"name": "token-reader"},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "token-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "datadog-agent"}],
    })
    core = client.CoreV1Api(sa_api)
    named = "metadata.name=datadogtoken"
    items = core.list_namespaced_config_map("default", field_selector=named).items
    assert [cm.metadata.name for cm in items] == ["datadogtoken"]
    stream = core.list_namespaced_config_map("default", field_selector=named, watch=True,
                                             timeout_seconds=1, _preload_content=False)
    assert stream.status == 200
    stream.release_conn()
    assert denied(lambda: core.list_namespaced_config_map("default"))["details"] == {
        "kind": "configmaps"
    }
    # The list named by its fieldSelector is denied with that name, like a get.
    assert denied(
        lambda: core.list_namespaced_config_map("kube-system", field_selector=named)
    ) == forbidden(
        f'configmaps "datadogtoken" is forbidden: User "{SA_USER}" cannot list resource '
        '"configmaps" in API group "" in the namespace "kube-system"',
        name="datadogtoken",
        kind="configmaps",
    )


def test_anonymous_requests(sim):
    anonymous = sim.api_client("")
    assert raw_get(anonymous, "/version")[0] == 200
    assert raw_get(anonymous, "/readyz")[0] == 200
    status, body = raw_get(anonymous, "/api")
    assert (status, json.loads(body)) == (
        403, forbidden('forbidden: User "system:anonymous" cannot get path "/api"')
    )
    core = client.CoreV1Api(anonymous)
    assert denied(lambda: core.list_namespace())["message"] == (
        'namespaces is forbidden: User "system:anonymous" cannot list resource "namespaces" '
        'in API group "" at the cluster scope'
    )


@pytest.mark.kubectl
def test_kubectl_with_a_service_account_token(sim, kubectl):
    token = sim.issue_token("default", "datadog-agent")

    def as_agent(*args: str) -> tuple[int, str, str]:
        result = kubectl(sim, *args, token=token, check=False)
        return result.returncode, result.stdout, result.stderr

    assert as_agent("get", "configmaps") == (
        1, "",
        f'Error from server (Forbidden): configmaps is forbidden: User "{SA_USER}" cannot list '
        'resource "configmaps" in API group "" in the namespace "default"\n',
    )  # fmt: skip
    assert as_agent("get", "--raw", "/readyz") == (0, "ok", "")
    assert as_agent("get", "--raw", "/metrics") == (
        1, "",
        f'Error from server (Forbidden): forbidden: User "{SA_USER}" cannot get path "/metrics"\n',
    )  # fmt: skip

    kubectl(sim, "create", "-f", "-", stdin=AGENT_RBAC_YAML)  # as the admin (system:masters)
    code, out, err = as_agent(
        "create", "configmap", "datadogtoken", "--from-literal=event.tokenKey=0"
    )
    assert (code, out, err) == (0, "configmap/datadogtoken created\n", "")
    code, out, _ = as_agent("get", "configmap", "datadogtoken", "-o", "jsonpath={.data}")
    assert (code, json.loads(out)) == (0, {"event.tokenKey": "0"})
    assert as_agent("get", "configmap", "other")[2] == (
        'Error from server (Forbidden): configmaps "other" is forbidden: '
        f'User "{SA_USER}" cannot get resource "configmaps" in API group "" in the namespace '
        '"default"\n'
    )
    assert as_agent("delete", "configmap", "datadogtoken")[2] == (
        'Error from server (Forbidden): configmaps "datadogtoken" is forbidden: '
        f'User "{SA_USER}" cannot delete resource "configmaps" in API group "" in the '
        'namespace "default"\n'
    )
    code, out, _ = as_agent("get", "componentstatuses", "-o", "name")
    assert code == 0
    assert "componentstatus/" in out
    assert as_agent("get", "leases")[2] == (
        f'Error from server (Forbidden): leases.coordination.k8s.io is forbidden: User '
        f'"{SA_USER}" cannot list resource "leases" in API group "coordination.k8s.io" in the '
        'namespace "default"\n'
    )
