"""kubesim authentication (tokens) and authorization (RBAC from stored objects)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from kubernetes import client
from kubesim_http import call

import kubesim

CM = "/api/v1/namespaces/default/configmaps"
RBAC = "rbac.authorization.k8s.io"
PACKAGE = Path(kubesim.__file__).parent


def test_optional_modules_are_active_when_present(kubesim):
    # A module that exists but failed to load would silently weaken kubesim: catch it here.
    assert kubesim.features == {"protobuf": (PACKAGE / "protobuf.py").exists(),
                                "rbac": (PACKAGE / "rbac.py").exists()}


def test_bad_token_is_401(kubesim):
    reply = call(kubesim, "GET", CM, token="not-a-token")
    assert reply.status == 401
    assert reply.json == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Failure", "message": "Unauthorized",
                          "reason": "Unauthorized", "code": 401}


def test_anonymous_reaches_public_info_only(kubesim):
    assert call(kubesim, "GET", "/version", token="").status == 200
    assert call(kubesim, "GET", "/readyz", token="").status == 200
    denied = call(kubesim, "GET", "/api", token="")
    assert denied.status == 403
    assert denied.json["message"] == 'forbidden: User "system:anonymous" cannot get path "/api"'
    assert denied.json["details"] == {}
    listing = call(kubesim, "GET", CM, token="")
    assert listing.status == 403
    assert listing.json["message"] == (
        'configmaps is forbidden: User "system:anonymous" cannot list resource "configmaps" in '
        'API group "" in the namespace "default"')
    assert listing.json["details"] == {"kind": "configmaps"}


needs_rbac = pytest.mark.skipif(not (PACKAGE / "rbac.py").exists(),
                                reason="kubesim.rbac not written yet")


@needs_rbac
def test_serviceaccount_token_is_denied_then_allowed_by_a_rolebinding(kubesim):
    token = kubesim.issue_token("default", "agent")
    denied = call(kubesim, "GET", f"{CM}/datadogtoken", token=token)
    assert denied.status == 403
    assert denied.json == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'configmaps "datadogtoken" is forbidden: User '
                   '"system:serviceaccount:default:agent" cannot get resource "configmaps" in '
                   'API group "" in the namespace "default"',
        "reason": "Forbidden", "details": {"name": "datadogtoken", "kind": "configmaps"},
        "code": 403}
    assert call(kubesim, "GET", "/api", token=token).status == 200  # system:discovery
    call(kubesim, "POST", f"/apis/{RBAC}/v1/namespaces/default/roles", {
        "metadata": {"name": "token-rw"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                   "resourceNames": ["datadogtoken"], "verbs": ["get", "update"]},
                  {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]})
    call(kubesim, "POST", f"/apis/{RBAC}/v1/namespaces/default/rolebindings", {
        "metadata": {"name": "agent-token"},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "token-rw"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "default"}]})
    api = client.CoreV1Api(kubesim.api_client(token))
    api.create_namespaced_config_map("default", {"metadata": {"name": "datadogtoken"}})
    assert api.read_namespaced_config_map("datadogtoken", "default").metadata.name == \
        "datadogtoken"
    with pytest.raises(client.ApiException) as info:
        api.read_namespaced_config_map("other", "default")
    assert info.value.status == 403
    with pytest.raises(client.ApiException) as info:
        api.list_namespaced_config_map("default")
    assert info.value.status == 403
    with pytest.raises(client.ApiException) as info:
        api.read_namespaced_config_map("datadogtoken", "kube-system")
    assert info.value.status == 403


@needs_rbac
def test_clusterrolebinding_grants_events_cluster_wide(kubesim):
    token = kubesim.issue_token("kube-system", "collector")
    call(kubesim, "POST", f"/apis/{RBAC}/v1/clusterroles", {
        "metadata": {"name": "events-reader"},
        "rules": [{"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list",
                                                                         "watch"]},
                  {"nonResourceURLs": ["/readyz"], "verbs": ["get"]}]})
    call(kubesim, "POST", f"/apis/{RBAC}/v1/clusterrolebindings", {
        "metadata": {"name": "collector"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "events-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "collector",
                      "namespace": "kube-system"}]})
    assert call(kubesim, "GET", "/api/v1/events", token=token).status == 200
    assert call(kubesim, "GET", "/api/v1/events?watch=1&timeoutSeconds=1",
                token=token).status == 200
    assert call(kubesim, "GET", "/apis/events.k8s.io/v1/events", token=token).status == 403
    assert call(kubesim, "POST", "/api/v1/namespaces/default/events",
                {"metadata": {"name": "e"}}, token=token).status == 403


def test_token_dies_with_its_serviceaccount(kubesim):
    token = kubesim.issue_token("default", "shortlived")
    assert call(kubesim, "GET", "/version", token=token).status == 200
    call(kubesim, "DELETE", "/api/v1/namespaces/default/serviceaccounts/shortlived")
    assert call(kubesim, "GET", "/version", token=token).status == 401
    call(kubesim, "POST", "/api/v1/namespaces/default/serviceaccounts",
         {"metadata": {"name": "shortlived"}})
    assert call(kubesim, "GET", "/version", token=token).status == 401  # new uid


def test_service_account_token_secret_is_filled_and_authenticates(kubesim_tls):
    sim = kubesim_tls
    call(sim, "POST", "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "old"}})
    secret = call(sim, "POST", "/api/v1/namespaces/default/secrets", {
        "metadata": {"name": "old-token",
                     "annotations": {"kubernetes.io/service-account.name": "old"}},
        "type": "kubernetes.io/service-account-token"}).json
    data = secret["data"]
    assert base64.b64decode(data["namespace"]) == b"default"
    assert base64.b64decode(data["ca.crt"]).decode() == Path(sim.ca_file).read_text()
    token = base64.b64decode(data["token"]).decode()
    call(sim, "GET", "/version", token=token)
    assert "system:serviceaccount:default:old" in {c["user"] for c in sim.counts()["clients"]}
    call(sim, "DELETE", "/api/v1/namespaces/default/secrets/old-token")
    assert call(sim, "GET", "/version", token=token).status == 401
    invalid = call(sim, "POST", "/api/v1/namespaces/default/secrets", {
        "metadata": {"name": "x"}, "type": "kubernetes.io/service-account-token"})
    assert invalid.status == 422
    assert "metadata.annotations[kubernetes.io/service-account.name]: Required value" in \
        invalid.json["message"]


def test_tls_with_the_official_client(kubesim_tls):
    assert kubesim_tls.url.startswith("https://127.0.0.1:")
    api = client.CoreV1Api(kubesim_tls.api_client())
    assert {n.metadata.name for n in api.list_namespace().items} >= {
        "default", "kube-system", "kube-public"}
