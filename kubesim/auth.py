"""Bearer-token authentication: admin token, ServiceAccount tokens, anonymous.

ServiceAccount tokens come from the admin API / TokenRequest (bound to the account's uid,
like projected tokens) or from Secrets of type ``kubernetes.io/service-account-token``
(filled in by the emulated token controller). A token stops working when its account (or
its Secret) is deleted, as with the real authenticator. Tokens are JWT-shaped (HS256 with a
per-server key) so clients that peek at the claims find the usual ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

from kubesim.requestinfo import UserInfo
from kubesim.store import Store, Stored, object_key

__all__ = ["ADMIN_USER", "ANONYMOUS", "Authenticator", "sa_user"]

ADMIN_USER = UserInfo("kubesim-admin", ("system:masters", "system:authenticated"))
ANONYMOUS = UserInfo("system:anonymous", ("system:unauthenticated",))
SA_TOKEN_SECRET = "kubernetes.io/service-account-token"


def sa_user(namespace: str, name: str) -> UserInfo:
    return UserInfo(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


@dataclass(frozen=True, slots=True)
class _Binding:
    namespace: str
    name: str
    uid: str
    secret: str = ""
    """Key of the Secret the token lives in ("" for issued tokens)."""
    expires: float = 0.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Authenticator:
    """Maps bearer tokens to users; watches Secrets through the store's hooks."""

    def __init__(self, store: Store, admin_token: str) -> None:
        self._store = store
        self.admin_token = admin_token
        self._key = secrets.token_bytes(32)
        self._tokens: dict[str, _Binding] = {}
        store.on_write.append(self._on_write)
        store.on_delete.append(self._on_delete)

    def _mint(self, namespace: str, name: str, uid: str, expires: int, legacy: bool) -> str:
        header = {"alg": "HS256", "kid": "kubesim"}
        if legacy:
            claims: dict[str, Any] = {
                "iss": "kubernetes/serviceaccount",
                "kubernetes.io/serviceaccount/namespace": namespace,
                "kubernetes.io/serviceaccount/service-account.name": name,
                "kubernetes.io/serviceaccount/service-account.uid": uid,
                "sub": f"system:serviceaccount:{namespace}:{name}",
            }
        else:
            now = int(time.time())
            claims = {
                "aud": ["https://kubernetes.default.svc.cluster.local"],
                "exp": expires, "iat": now, "nbf": now,
                "iss": "https://kubernetes.default.svc.cluster.local",
                "jti": secrets.token_hex(16),
                "kubernetes.io": {"namespace": namespace,
                                  "serviceaccount": {"name": name, "uid": uid}},
                "sub": f"system:serviceaccount:{namespace}:{name}",
            }
        signing = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
        sig = hmac.new(self._key, signing.encode(), hashlib.sha256).digest()
        return f"{signing}.{_b64(sig)}"

    def issue(self, namespace: str, name: str, expiration_seconds: int = 0) -> tuple[str, int]:
        """A token for an existing ServiceAccount: (token, expiry as unix seconds)."""
        account = self._store.get("serviceaccounts", object_key(namespace, name))
        if account is None:
            raise KeyError(f"serviceaccount {namespace}/{name} does not exist")
        expires = int(time.time()) + (expiration_seconds or 3600 * 24 * 365)
        uid = account.obj["metadata"]["uid"]
        token = self._mint(namespace, name, uid, expires, legacy=False)
        self._tokens[token] = _Binding(namespace, name, uid, expires=float(expires))
        return token, expires

    def authenticate(self, authorization: str | None) -> UserInfo | None:
        """The user for an ``Authorization`` header; None means 401 (a token nobody knows)."""
        if not authorization:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return ANONYMOUS
        if hmac.compare_digest(token, self.admin_token):
            return ADMIN_USER
        binding = self._tokens.get(token)
        if binding is None:
            return None
        if binding.expires and binding.expires < time.time():
            return None
        account = self._store.get("serviceaccounts", object_key(binding.namespace, binding.name))
        if account is None or account.obj["metadata"]["uid"] != binding.uid:
            return None
        if binding.secret and self._store.get("secrets", binding.secret) is None:
            return None
        return sa_user(binding.namespace, binding.name)

    # The token controller: fill service-account-token Secrets and index their tokens.
    def fill_token_secret(self, obj: dict[str, Any], ca_pem: str) -> None:
        """Called before a ``service-account-token`` Secret is stored."""
        meta = obj["metadata"]
        name = (meta.get("annotations") or {}).get("kubernetes.io/service-account.name", "")
        namespace = meta.get("namespace", "")
        account = self._store.get("serviceaccounts", object_key(namespace, name))
        data = dict(obj.get("data") or {})
        if account is None or data.get("token"):
            return
        uid = account.obj["metadata"]["uid"]
        meta.setdefault("annotations", {})["kubernetes.io/service-account.uid"] = uid
        token = self._mint(namespace, name, uid, 0, legacy=True)
        data["token"] = base64.b64encode(token.encode()).decode()
        data["namespace"] = base64.b64encode(namespace.encode()).decode()
        data["ca.crt"] = base64.b64encode(ca_pem.encode()).decode()
        obj["data"] = data

    def _on_write(self, bucket: str, stored: Stored) -> None:
        if bucket != "secrets" or stored.obj.get("type") != SA_TOKEN_SECRET:
            return
        meta = stored.obj["metadata"]
        annotations = meta.get("annotations") or {}
        raw = (stored.obj.get("data") or {}).get("token")
        if not raw:
            return
        try:
            token = base64.b64decode(raw).decode()
        except ValueError:
            return
        self._tokens[token] = _Binding(
            meta.get("namespace", ""),
            annotations.get("kubernetes.io/service-account.name", ""),
            annotations.get("kubernetes.io/service-account.uid", ""),
            secret=stored.key,
        )

    def _on_delete(self, bucket: str, stored: Stored) -> None:
        if bucket == "secrets" and stored.obj.get("type") == SA_TOKEN_SECRET:
            self._tokens = {t: b for t, b in self._tokens.items() if b.secret != stored.key}
