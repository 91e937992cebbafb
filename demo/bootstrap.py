"""The demo's cluster: kubesim in-process with the repository's manifests applied.

The RBAC and the token ConfigMap come from ``manifests/`` exactly as a user would
``kubectl create -f`` them, so the demo's agents run with the least privilege the project
ships (a missing rule shows up as a 403 in their logs) and authenticate as the
``default/datadog-agent`` ServiceAccount, never as an administrator.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubesim.resources import RESOURCES, Resource
from kubesim.runner import KubeSim

__all__ = [
    "AGENT_NAMESPACE",
    "AGENT_SERVICE_ACCOUNT",
    "MANIFESTS_ENV",
    "AgentCredentials",
    "ManifestError",
    "apply_manifests",
    "default_manifests_dir",
    "load_manifests",
    "make_credentials",
]

MANIFESTS_ENV = "KUBE_EVENT_AGENT_MANIFESTS"
"""Overrides where the manifests are read from (``--manifests`` wins over it)."""
AGENT_NAMESPACE = "default"
AGENT_SERVICE_ACCOUNT = "datadog-agent"
CONFIGMAP_FILE = "datadog_configmap.yaml"
RBAC_DIR = "rbac"


class ManifestError(Exception):
    """The manifests cannot be read or applied; ``str()`` is one line naming the file."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """One object of a manifest file, with where it came from."""

    path: Path
    resource: Resource
    obj: dict[str, Any]

    @property
    def title(self) -> str:
        meta = self.obj.get("metadata") or {}
        return f"{self.resource.kind} {meta.get('name', '?')}"


@dataclass(frozen=True, slots=True)
class AgentCredentials:
    """What an agent replica needs to reach kubesim as the ServiceAccount."""

    kubeconfig: str
    identity: str
    """``system:serviceaccount:<namespace>:<name>``, for display."""


def default_manifests_dir() -> Path:
    """``$KUBE_EVENT_AGENT_MANIFESTS``, else ``manifests/`` next to this package."""
    override = os.environ.get(MANIFESTS_ENV, "")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "manifests"


def load_manifests(root: Path) -> list[Manifest]:
    """Every object of ``<root>/rbac/*.yaml`` (sorted) then ``<root>/datadog_configmap.yaml``.

    Raises ``ManifestError`` before anything is applied, so a broken checkout fails at once.
    """
    rbac = root / RBAC_DIR
    configmap = root / CONFIGMAP_FILE
    if not rbac.is_dir():
        raise ManifestError(f"manifests not found: {rbac} is not a directory "
                            f"(use --manifests DIR or {MANIFESTS_ENV})")
    files = sorted(p for p in rbac.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise ManifestError(f"manifests not found: no .yaml file in {rbac}")
    if not configmap.is_file():
        raise ManifestError(f"manifests not found: {configmap} is missing")
    return [m for path in (*files, configmap) for m in _read(path)]


def _read(path: Path) -> Iterator[Manifest]:
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ManifestError(f"{path}: not valid YAML{where}") from None
    for doc in documents:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestError(f"{path}: a document is not a mapping")
        items = doc.get("items") if doc.get("kind") == "List" else [doc]
        for obj in items or ():
            yield Manifest(path, _resource_of(path, obj), obj)


def _resource_of(path: Path, obj: Any) -> Resource:
    if not isinstance(obj, dict):
        raise ManifestError(f"{path}: an item is not a mapping")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    for resource in RESOURCES:
        if resource.kind == kind and resource.api_version == api_version:
            return resource
    raise ManifestError(f"{path}: kubesim does not serve {api_version}/{kind}")


def apply_manifests(sim: KubeSim, manifests: list[Manifest]) -> list[str]:
    """Create every object as ``kubectl create -f`` would; returns their titles."""
    created = []
    for manifest in manifests:
        meta = manifest.obj.get("metadata") or {}
        namespace = ""
        if manifest.resource.namespaced:
            namespace = meta.get("namespace") or AGENT_NAMESPACE
        try:
            sim.create(manifest.resource.qualified, manifest.obj, namespace)
        except ValueError as exc:
            raise ManifestError(f"{manifest.path}: {manifest.title}: {exc}") from None
        created.append(manifest.title)
    return created


def make_credentials(sim: KubeSim) -> AgentCredentials:
    """A token and kubeconfig for the agents' ServiceAccount (which the manifests create)."""
    if sim.get("serviceaccounts", AGENT_SERVICE_ACCOUNT, AGENT_NAMESPACE) is None:
        raise ManifestError(f"the manifests create no ServiceAccount "
                            f"{AGENT_NAMESPACE}/{AGENT_SERVICE_ACCOUNT}")
    token = sim.issue_token(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)
    return AgentCredentials(
        kubeconfig=sim.kubeconfig_for(token, namespace=AGENT_NAMESPACE),
        identity=f"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}",
    )
