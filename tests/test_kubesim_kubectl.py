"""kubectl 1.32 against kubesim over TLS (client-go sends bearer tokens only over TLS)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from kubesim_http import call

import kubesim as kubesim_package

pytestmark = pytest.mark.kubectl

PACKAGE = Path(kubesim_package.__file__).parent
needs_protobuf = pytest.mark.skipif(not (PACKAGE / "protobuf.py").exists(),
                                    reason="kubectl's typed create sends protobuf bodies; "
                                    "kubesim.protobuf not written yet")
needs_rbac = pytest.mark.skipif(not (PACKAGE / "rbac.py").exists(),
                                reason="kubesim.rbac not written yet")

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: demo, labels: {app: agent}}
data: {key: value}
---
apiVersion: v1
kind: Secret
metadata: {name: api-key, namespace: demo}
stringData: {api_key: secret}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: agent, namespace: demo}
---
apiVersion: v1
kind: Endpoints
metadata: {name: agent-lock, namespace: demo}
---
apiVersion: v1
kind: Event
metadata: {name: agent.1, namespace: demo}
involvedObject: {kind: Pod, name: agent-0, namespace: demo}
reason: Started
message: started the agent
type: Normal
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: agent-lock, namespace: demo}
spec: {holderIdentity: agent-0, leaseDurationSeconds: 60}
---
apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: agent.2, namespace: demo}
eventTime: "2024-05-01T10:00:00.000000Z"
reportingController: agent
reportingInstance: agent-0
action: Start
reason: Started
note: via events.k8s.io
type: Normal
regarding: {kind: Pod, name: agent-0, namespace: demo}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: agent, namespace: demo}
rules:
- {apiGroups: [""], resources: [configmaps], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: agent, namespace: demo}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: agent}
subjects:
- {kind: ServiceAccount, name: agent, namespace: demo}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: agent-events}
rules:
- {apiGroups: [""], resources: [events], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: agent-events}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: agent-events}
subjects:
- {kind: ServiceAccount, name: agent, namespace: demo}
"""

KINDS = ("namespace/demo", "configmap/settings", "secret/api-key", "serviceaccount/agent",
         "endpoints/agent-lock", "event.events.k8s.io/agent.1", "lease.coordination.k8s.io/"
         "agent-lock", "event.events.k8s.io/agent.2", "role.rbac.authorization.k8s.io/agent",
         "rolebinding.rbac.authorization.k8s.io/agent",
         "clusterrole.rbac.authorization.k8s.io/agent-events",
         "clusterrolebinding.rbac.authorization.k8s.io/agent-events")


def test_create_apply_get_delete_every_kind_from_a_file(kubesim_tls, kubectl, tmp_path):
    manifest = tmp_path / "all.yaml"
    manifest.write_text(MANIFEST)
    created = kubectl(kubesim_tls, "create", "-f", str(manifest)).stdout
    assert created.count(" created") == 12
    applied = kubectl(kubesim_tls, "apply", "-f", str(manifest)).stdout
    assert applied.count("configured") == 12
    again = kubectl(kubesim_tls, "apply", "-f", str(manifest)).stdout
    # As with a real server: stringData is never in the live object, so kubectl always
    # sends it again and reports the Secret "configured" (the write itself is a no-op).
    assert again.count("unchanged") == 11
    assert "secret/api-key configured" in again
    lines = kubectl(kubesim_tls, "get", "-n", "demo", "cm,secrets,sa,ep,ev,leases,roles,"
                    "rolebindings", "-o", "name").stdout.split()
    for expected in ("configmap/settings", "secret/api-key", "serviceaccount/agent",
                     "endpoints/agent-lock", "event/agent.1", "event/agent.2",
                     "lease.coordination.k8s.io/agent-lock",
                     "role.rbac.authorization.k8s.io/agent",
                     "rolebinding.rbac.authorization.k8s.io/agent"):
        assert expected in lines
    table = kubectl(kubesim_tls, "get", "cm", "-n", "demo").stdout.splitlines()
    assert table[0].split() == ["NAME", "DATA", "AGE"]
    assert table[-1].split()[:2] == ["settings", "1"]
    events = kubectl(kubesim_tls, "get", "events", "-n", "demo").stdout.splitlines()
    assert events[0].split()[:4] == ["LAST", "SEEN", "TYPE", "REASON"]
    assert "pod/agent-0" in events[1]
    lease = json.loads(kubectl(kubesim_tls, "get", "lease", "agent-lock", "-n", "demo",
                               "-o", "json").stdout)
    assert lease["spec"]["holderIdentity"] == "agent-0"
    assert "kubectl.kubernetes.io/last-applied-configuration" in lease["metadata"]["annotations"]
    manifest.write_text(MANIFEST.replace("holderIdentity: agent-0", "holderIdentity: agent-1"))
    assert "lease.coordination.k8s.io/agent-lock configured" in kubectl(
        kubesim_tls, "apply", "-f", str(manifest)).stdout
    assert kubectl(kubesim_tls, "get", "lease", "agent-lock", "-n", "demo", "-o",
                   "jsonpath={.spec.holderIdentity}").stdout == "agent-1"
    deleted = kubectl(kubesim_tls, "delete", "-f", str(manifest)).stdout
    assert deleted.count("deleted") == 12
    assert call(kubesim_tls, "GET", "/api/v1/namespaces/demo").status == 404


def test_get_every_resource_type(kubesim_tls, kubectl):
    for kind in ("namespaces", "configmaps", "endpoints", "events", "serviceaccounts",
                 "secrets", "componentstatuses", "leases", "events.events.k8s.io", "roles",
                 "rolebindings", "clusterroles", "clusterrolebindings"):
        result = kubectl(kubesim_tls, "get", kind, "-A")
        assert result.stdout or "No resources found" in result.stderr, kind
    cs = kubectl(kubesim_tls, "get", "cs").stdout.splitlines()
    assert cs[0].split() == ["NAME", "STATUS", "MESSAGE", "ERROR"]
    resources = kubectl(kubesim_tls, "api-resources", "-o", "name").stdout.split()
    assert {"configmaps", "leases.coordination.k8s.io", "events.events.k8s.io",
            "clusterroles.rbac.authorization.k8s.io"} <= set(resources)


@needs_protobuf
def test_typed_create_commands_send_protobuf(kubesim_tls, kubectl):
    kubectl(kubesim_tls, "create", "namespace", "team")
    kubectl(kubesim_tls, "create", "configmap", "datadogtoken", "-n", "team",
            '--from-literal=event.tokenKey=0')
    kubectl(kubesim_tls, "create", "secret", "generic", "creds", "-n", "team",
            "--from-literal=api_key=abc")
    kubectl(kubesim_tls, "create", "serviceaccount", "bot", "-n", "team")
    cm = call(kubesim_tls, "GET", "/api/v1/namespaces/team/configmaps/datadogtoken").json
    assert cm["data"] == {"event.tokenKey": "0"}
    secret = call(kubesim_tls, "GET", "/api/v1/namespaces/team/secrets/creds").json
    assert secret["data"] == {"api_key": "YWJj"}
    assert secret["type"] == "Opaque"
    assert call(kubesim_tls, "GET", "/api/v1/namespaces/team/serviceaccounts/bot").status == 200
    again = kubectl(kubesim_tls, "create", "configmap", "datadogtoken", "-n", "team",
                    check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == ('error: failed to create configmap: configmaps '
                                    '"datadogtoken" already exists')


def test_patch_label_replace_conflict_and_errors(kubesim_tls, kubectl):
    call(kubesim_tls, "POST", "/api/v1/namespaces/default/configmaps",
         {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    kubectl(kubesim_tls, "patch", "cm", "cfg", "-p", '{"data":{"b":"2"}}')
    kubectl(kubesim_tls, "patch", "cm", "cfg", "--type", "merge", "-p", '{"data":{"c":"3"}}')
    kubectl(kubesim_tls, "patch", "cm", "cfg", "--type", "json", "-p",
            '[{"op":"remove","path":"/data/a"}]')
    kubectl(kubesim_tls, "label", "cm", "cfg", "team=core")
    kubectl(kubesim_tls, "annotate", "cm", "cfg", "note=hi")
    cfg = json.loads(kubectl(kubesim_tls, "get", "cm", "cfg", "-o", "json").stdout)
    assert cfg["data"] == {"b": "2", "c": "3"}
    assert cfg["metadata"]["labels"] == {"team": "core"}
    assert cfg["metadata"]["annotations"] == {"note": "hi"}
    stale = dict(cfg, data={"x": "y"})
    stale["metadata"] = dict(cfg["metadata"], resourceVersion="1")
    replaced = kubectl(kubesim_tls, "replace", "-f", "-", stdin=json.dumps(stale), check=False)
    assert replaced.returncode == 1
    assert ('Error from server (Conflict): error when replacing "STDIN": Operation cannot be '
            'fulfilled on configmaps "cfg": the object has been modified; please apply your '
            "changes to the latest version and try again") in replaced.stderr
    missing = kubectl(kubesim_tls, "get", "cm", "nope", check=False)
    assert missing.stderr.strip() == 'Error from server (NotFound): configmaps "nope" not found'
    bad = kubectl(kubesim_tls, "create", "-f", "-", check=False,
                  stdin='{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad!"}}')
    assert 'The ConfigMap "Bad!" is invalid' in bad.stderr
    unknown = kubectl(kubesim_tls, "create", "-f", "-", check=False,
                      stdin='{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u"},'
                            '"dta":{}}')
    assert 'strict decoding error: unknown field "dta"' in unknown.stderr
    kubectl(kubesim_tls, "describe", "cm", "cfg")
    kubectl(kubesim_tls, "delete", "cm", "cfg")


@needs_rbac
def test_serviceaccount_token_over_tls_with_rbac(kubesim_tls, kubectl):
    token = kubesim_tls.issue_token("default", "viewer")
    denied = kubectl(kubesim_tls, "get", "configmaps", token=token, check=False)
    assert denied.returncode == 1
    assert denied.stderr.strip() == (
        'Error from server (Forbidden): configmaps is forbidden: User '
        '"system:serviceaccount:default:viewer" cannot list resource "configmaps" in API group '
        '"" in the namespace "default"')
    kubectl(kubesim_tls, "create", "role", "cm-reader", "--verb=get,list", "--resource=configmaps")
    kubectl(kubesim_tls, "create", "rolebinding", "viewer", "--role=cm-reader",
            "--serviceaccount=default:viewer")
    allowed = kubectl(kubesim_tls, "get", "configmaps", token=token, check=False)
    assert allowed.returncode == 0, allowed.stderr
    can = kubectl(kubesim_tls, "auth", "can-i", "list", "configmaps", token=token, check=False)
    assert can.returncode in (0, 1)  # SelfSubjectAccessReview is not served: no crash
    whoami = kubectl(kubesim_tls, "get", "secrets", token=token, check=False)
    assert "cannot list resource \"secrets\"" in whoami.stderr


def test_kubectl_create_token_and_raw_health(kubesim_tls, kubectl):
    kubectl(kubesim_tls, "create", "sa", "robot")
    token = kubectl(kubesim_tls, "create", "token", "robot").stdout.strip()
    assert token.count(".") == 2
    call(kubesim_tls, "GET", "/version", token=token)
    assert "system:serviceaccount:default:robot" in {
        c["user"] for c in kubesim_tls.counts()["clients"]}
    readyz = kubectl(kubesim_tls, "get", "--raw", "/readyz?verbose").stdout
    assert readyz.startswith("[+]ping ok")
    assert readyz.strip().endswith("readyz check passed")
    version = kubectl(kubesim_tls, "version", "-o", "json").stdout
    assert json.loads(version)["serverVersion"]["minor"] == "32"


def test_kubectl_get_watch_streams_tables(kubesim_tls, kubectl, kubectl_cache):
    kubectl(kubesim_tls, "get", "cm")  # warm the discovery cache
    proc = subprocess.Popen(
        ["kubectl", "--kubeconfig", kubesim_tls.kubeconfig, "get", "cm", "-w",
         "--output-watch-events"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"KUBECACHEDIR": str(kubectl_cache), "HOME": str(kubectl_cache),
             "PATH": "/usr/local/bin:/usr/bin:/bin"})
    try:
        assert proc.stdout is not None
        call(kubesim_tls, "POST", "/api/v1/namespaces/default/configmaps",
             {"metadata": {"name": "watched"}})
        header = proc.stdout.readline().split()
        line = proc.stdout.readline().split()
        assert header[:2] == ["EVENT", "NAME"]
        assert line[:2] == ["ADDED", "watched"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
