"""Kubeconfig files (current-context set) that kubectl and the official client accept."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml

__all__ = ["kubeconfig_text", "write_kubeconfig"]


def kubeconfig_text(server: str, token: str | None, ca_pem: str = "",
                    namespace: str = "default", user: str = "kubesim-admin") -> str:
    cluster: dict[str, object] = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem.encode()).decode()
    credentials: dict[str, object] = {"token": token} if token else {}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubesim", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "kubesim", "context": {"cluster": "kubesim", "user": user,
                                                    "namespace": namespace}}],
        "current-context": "kubesim",
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_kubeconfig(path: str | Path, server: str, token: str | None, ca_pem: str = "",
                     namespace: str = "default", user: str = "kubesim-admin") -> str:
    """Write (mode 0600: it holds a bearer token) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(kubeconfig_text(server, token, ca_pem, namespace, user))
    return str(path)
