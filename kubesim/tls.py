"""A throwaway CA (trustme) and a server certificate for 127.0.0.1 / localhost."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["TlsFiles", "make_tls"]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: Path
    """PEM of the CA clients must trust (also inlined into kubeconfigs)."""
    ca_pem: str
    context: ssl.SSLContext


def make_tls(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """Create a CA and a server certificate valid for ``host``, 127.0.0.1 and localhost."""
    ca = trustme.CA(organization_name="kubesim")
    names = dict.fromkeys([host, "127.0.0.1", "localhost"])
    cert = ca.issue_cert(*names, common_name="kube-apiserver")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    return TlsFiles(ca_file, ca.cert_pem.bytes().decode(), context)
