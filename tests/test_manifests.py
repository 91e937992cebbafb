"""manifests/: valid Kubernetes objects, consistent with the agent, and accepted by a server.

- Every document validates strictly against the OpenAPI schemas of the oldest and the newest
  Kubernetes that kubernetes-validate ships (1.25 is the floor issue 7 sets).
- The workloads agree with the agent's own configuration: the pod's environment and the
  sample datadog.yaml go through the real config loader without a warning; ports, paths,
  lock and ConfigMap names, the grace period and the memory limits line up.
- ``kubectl create`` of the RBAC and the token ConfigMap (and the seed's one-liner) succeed
  against kubesim, as do the documented ``kubectl replace`` of the lock variants.

What the RBAC grants is proven, rule by rule, in test_rbac_least_privilege.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubesim.runner import KubeSim
from supervisor.checkpoint import TOKEN_CONFIGMAP, TOKEN_KEY, parse_token
from supervisor.config import DEFAULT_CONFIG_PATH, KEYS, env_name, load_config

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
RBAC = MANIFESTS / "rbac"
FILES = sorted(MANIFESTS.rglob("*.yaml"))
VERSIONS = ("1.25.0", "1.37.0")
"""The oldest Kubernetes issue 7 supports, and the newest schema kubernetes-validate ships."""
MIB = 1024 * 1024
NAMESPACE = "default"
SA_USER = f"system:serviceaccount:{NAMESPACE}:datadog-agent"

Kubectl = Callable[..., Any]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in documents(path) if d["kind"] == kind]
    return doc


def pod_spec(path: Path, kind: str) -> dict[str, Any]:
    return find(path, kind)["spec"]["template"]["spec"]


def container(path: Path, kind: str) -> dict[str, Any]:
    (agent,) = pod_spec(path, kind)["containers"]
    return agent


def quantity_bytes(text: str) -> int:
    units = {"Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


# -- schemas -----------------------------------------------------------------------------


def test_the_manifest_set_is_complete() -> None:
    names = {p.relative_to(MANIFESTS).as_posix() for p in FILES}
    assert {"agent.yaml", "agent-deployment.yaml", "datadog_configmap.yaml",
            "rbac/serviceaccount.yaml", "rbac/clusterrole.yaml", "rbac/role-token.yaml",
            "rbac/role-leader-election.yaml", "rbac/variants/leader-election-configmap.yaml",
            "rbac/variants/leader-election-lease.yaml"} <= names


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(MANIFESTS).as_posix())
def test_every_document_is_valid(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: "
                        f"{exc.message} at {'.'.join(map(str, exc.path))}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(MANIFESTS).as_posix())
def test_every_file_explains_itself_and_lives_in_one_namespace(path: Path) -> None:
    assert path.read_text().startswith("#"), f"{path.name} has no comment at the top"
    for doc in documents(path):
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


# -- the workloads agree with the agent ---------------------------------------------------

WORKLOADS = [("agent.yaml", "DaemonSet"), ("agent-deployment.yaml", "Deployment")]


def _pod_environment(path: Path, kind: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it (downward API filled in)."""
    downward = {"metadata.name": "datadog-agent-x7k2p", "metadata.namespace": NAMESPACE,
                "spec.nodeName": "node-1.example.internal"}
    env = {}
    for var in container(path, kind)["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = downward[var["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in var["valueFrom"]:
            env[var["name"]] = "0123456789abcdef0123456789abcdef"
    return env


@pytest.mark.parametrize(("name", "kind"), WORKLOADS)
def test_the_pod_configuration_loads_without_a_warning(name: str, kind: str,
                                                       tmp_path: Path) -> None:
    path = MANIFESTS / name
    sample = find(MANIFESTS / "datadog-agent-config.yaml", "ConfigMap")["data"]["datadog.yaml"]
    config_file = tmp_path / "datadog.yaml"
    config_file.write_text(sample)
    env = _pod_environment(path, kind)
    known = {env_name(key) for key in KEYS} | {"KUBERNETES", "TMPDIR"}
    assert set(env) <= known, f"not agent settings: {set(env) - known}"
    loaded = load_config(str(config_file), env, sa_namespace_path=str(tmp_path / "none"))
    assert loaded.warnings == ()
    config = loaded.config
    assert config.collect_kubernetes_events
    assert config.leader_election
    assert config.collect_controlplane_checks  # KUBERNETES=true
    assert config.pod_name == "datadog-agent-x7k2p"
    assert config.kube_resources_namespace == NAMESPACE
    assert config.api_key.get_secret_value()
    spec, agent = pod_spec(path, kind), container(path, kind)
    # The hand-over ends before Kubernetes' SIGKILL.
    assert config.shutdown_timeout < spec["terminationGracePeriodSeconds"]
    assert [p["containerPort"] for p in agent["ports"]] == [config.health_port]
    # A leaking worker is restarted by the supervisor before the cgroup OOM-kills anything.
    limit = quantity_bytes(agent["resources"]["limits"]["memory"])
    assert config.worker_memory_limit_mb * MIB < limit
    # The mounted datadog.yaml is the one the agent reads.
    (mount,) = [m for m in agent["volumeMounts"] if m["name"] == "config"]
    assert f"{mount['mountPath']}/datadog.yaml" == DEFAULT_CONFIG_PATH
    assert agent["args"] == ["--config", DEFAULT_CONFIG_PATH]


@pytest.mark.parametrize(("name", "kind"), WORKLOADS)
def test_probes_security_and_resources(name: str, kind: str) -> None:
    spec, agent = pod_spec(MANIFESTS / name, kind), container(MANIFESTS / name, kind)
    # /live, not /health: a crash-looping worker must not restart the pod (and drop the lease).
    assert agent["livenessProbe"]["httpGet"] == {"path": "/live", "port": "health"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}
    assert spec["serviceAccountName"] == "datadog-agent"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = agent["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # The fork server needs a writable TMPDIR on a read-only root.
    env = {v["name"]: v.get("value") for v in agent["env"]}
    (tmp,) = [m for m in agent["volumeMounts"] if m["mountPath"] == env["TMPDIR"]]
    (volume,) = [v for v in spec["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    (api_key,) = [v for v in agent["env"] if v["name"] == "DD_API_KEY"]
    assert api_key["valueFrom"]["secretKeyRef"]["optional"] is False
    resources = agent["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[section])
    assert (quantity_bytes(resources["requests"]["memory"])
            <= quantity_bytes(resources["limits"]["memory"]))


def test_the_deployment_runs_the_daemonsets_pod_with_documented_differences() -> None:
    daemon = copy.deepcopy(pod_spec(MANIFESTS / "agent.yaml", "DaemonSet"))
    deployment = copy.deepcopy(pod_spec(MANIFESTS / "agent-deployment.yaml", "Deployment"))
    affinity = deployment.pop("affinity")
    term = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = find(MANIFESTS / "agent-deployment.yaml", "Deployment")["spec"]["template"][
        "metadata"]["labels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    requests = [c["resources"].pop("requests") for c in (daemon["containers"][0],
                                                          deployment["containers"][0])]
    assert quantity_bytes(requests[0]["memory"]) < quantity_bytes(requests[1]["memory"])
    assert daemon == deployment
    assert find(MANIFESTS / "agent-deployment.yaml", "Deployment")["spec"]["replicas"] == 2


def test_rbac_names_match_the_agents_defaults() -> None:
    from supervisor.config import AgentConfig

    fields = AgentConfig.model_fields
    lock_name = fields["leader_lease_name"].default
    assert fields["leader_election_resource"].default == "endpoints"
    for path, group, resource in [
        (RBAC / "role-leader-election.yaml", "", "endpoints"),
        (RBAC / "variants" / "leader-election-configmap.yaml", "", "configmaps"),
        (RBAC / "variants" / "leader-election-lease.yaml", "coordination.k8s.io", "leases"),
    ]:
        named = [r for r in find(path, "Role")["rules"] if r.get("resourceNames")]
        assert named == [{"apiGroups": [group], "resources": [resource],
                          "resourceNames": [lock_name], "verbs": ["get", "update", "watch"]}]
    token_rules = find(RBAC / "role-token.yaml", "Role")["rules"]
    assert [r["resourceNames"] for r in token_rules if r.get("resourceNames")] == [
        [TOKEN_CONFIGMAP]]
    seeded = find(MANIFESTS / "datadog_configmap.yaml", "ConfigMap")
    assert seeded["metadata"]["name"] == TOKEN_CONFIGMAP
    assert seeded["data"] == {TOKEN_KEY: "0"}
    assert parse_token(seeded["data"]) is None  # "0": no token yet, start from now


# -- against an API server ----------------------------------------------------------------


@pytest.mark.kubectl
def test_kubectl_creates_the_rbac_and_the_token_configmap(kubesim_tls: KubeSim,
                                                          kubectl: Kubectl) -> None:
    sim = kubesim_tls
    out = kubectl(sim, "create", "-f", str(RBAC)).stdout
    for what in ("serviceaccount/datadog-agent", "clusterrole.rbac.authorization.k8s.io/"
                 "datadog-agent", "clusterrolebinding.rbac.authorization.k8s.io/datadog-agent",
                 "role.rbac.authorization.k8s.io/datadog-agent-token",
                 "rolebinding.rbac.authorization.k8s.io/datadog-agent-leader-election"):
        assert f"{what} created" in out, out
    # Not recursive: the variants are not applied alongside the Endpoints lock.
    role = sim.get("roles", "datadog-agent-leader-election", NAMESPACE)
    assert role is not None
    assert role["rules"] == find(RBAC / "role-leader-election.yaml", "Role")["rules"]
    kubectl(sim, "create", "-f", str(MANIFESTS / "datadog_configmap.yaml"))
    stored = sim.get("configmaps", TOKEN_CONFIGMAP, NAMESPACE)
    assert stored is not None
    assert stored["data"] == {TOKEN_KEY: "0"}
    # The ServiceAccount can read it (its token, as kubectl would send it).
    token = sim.issue_token(NAMESPACE, "datadog-agent")
    got = kubectl(sim, "get", "configmap", TOKEN_CONFIGMAP, "-o",
                  "jsonpath={.data.event\\.tokenKey}", token=token)
    assert got.stdout == "0"
    denied = kubectl(sim, "get", "configmap", "kube-root-ca.crt", token=token, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr


@pytest.mark.kubectl
@pytest.mark.parametrize("variant", ["leader-election-configmap.yaml",
                                     "leader-election-lease.yaml"])
def test_the_documented_variant_swap_works(kubesim_tls: KubeSim, kubectl: Kubectl,
                                           variant: str) -> None:
    sim = kubesim_tls
    kubectl(sim, "create", "-f", str(RBAC))
    path = RBAC / "variants" / variant
    out = kubectl(sim, "replace", "-f", str(path)).stdout
    assert "role.rbac.authorization.k8s.io/datadog-agent-leader-election replaced" in out
    role = sim.get("roles", "datadog-agent-leader-election", NAMESPACE)
    assert role is not None
    assert role["rules"] == find(path, "Role")["rules"]


@pytest.mark.kubectl
def test_the_seeds_one_liner_makes_the_same_configmap(kubesim_tls: KubeSim,
                                                      kubectl: Kubectl) -> None:
    sim = kubesim_tls
    kubectl(sim, "create", "configmap", "datadogtoken", '--from-literal=event.tokenKey=0')
    stored = sim.get("configmaps", TOKEN_CONFIGMAP, NAMESPACE)
    assert stored is not None
    assert stored["data"] == find(MANIFESTS / "datadog_configmap.yaml", "ConfigMap")["data"]
    assert parse_token(stored["data"]) is None
