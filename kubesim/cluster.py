"""The emulated cluster's state: store, tokens, faults, counters, component health, watches.

``Cluster`` is what request handlers and the admin API share. It also loads the optional
``kubesim.protobuf`` and ``kubesim.rbac`` modules (written separately): without them
protobuf bodies get 415 and every authenticated user is allowed.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from aiohttp import web
from loguru import logger

from kubesim import registry
from kubesim.auth import Authenticator
from kubesim.counting import RequestCounter
from kubesim.faults import Faults
from kubesim.requestinfo import RequestInfo, UserInfo
from kubesim.resources import RESOURCES, Resource, find
from kubesim.store import Store, Stored, object_key

__all__ = ["Cluster", "ComponentHealth", "ServerConfig", "WatchHandle"]

USER_KEY = web.RequestKey("kubesim.user", UserInfo)
"""Where the server keeps the authenticated user on each request."""

INITIAL_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
PUBLIC_PATHS = ("/version", "/healthz", "/livez", "/readyz")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    admin_token: str = ""
    history: int = 10_000
    """Changes retained per resource for watches and continue tokens (the watch cache)."""
    event_ttl: float = 3600.0
    """Seconds an Event lives after its last write (kube-apiserver --event-ttl, 1h)."""
    tls: bool = False
    bookmark_interval: float = 60.0
    """Seconds between BOOKMARKs on watches that allow them (the real server: ~1 min)."""
    min_request_timeout: float = 1800.0
    """Watches without timeoutSeconds end after a random 1-2x this (as the real server)."""
    namespace_finalize_delay: float = 0.2
    """Seconds a deleted namespace stays Terminating before its content and it are gone."""


@dataclass(slots=True)
class ComponentHealth:
    healthy: bool = True
    message: str = ""


@dataclass(eq=False, slots=True)
class WatchHandle:
    """An open watch stream, so fault injection and outages can cut it."""

    info: RequestInfo
    user: str
    cut: Callable[[], None]
    drop_at: float | None = None
    dropped: bool = False

    def abort(self) -> None:
        """Cut the connection mid-stream (the client sees no clean end of the response)."""
        self.dropped = True
        self.cut()


def _optional(name: str, required: tuple[str, ...]) -> ModuleType | None:
    try:
        module = importlib.import_module(f"kubesim.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"kubesim.{name}":
            return None
        logger.warning("kubesim.{} cannot be imported ({}); running without it", name, exc)
        return None
    except Exception as exc:  # a half-written module must not take the emulator down
        logger.warning("kubesim.{} cannot be imported ({!r}); running without it", name, exc)
        return None
    missing = [attr for attr in required if not hasattr(module, attr)]
    if missing:
        logger.warning("kubesim.{} lacks {}; running without it", name, ", ".join(missing))
        return None
    return module


@dataclass
class Cluster:
    config: ServerConfig
    ca_pem: str = ""
    store: Store = field(init=False)
    auth: Authenticator = field(init=False)
    faults: Faults = field(default_factory=Faults)
    counter: RequestCounter = field(default_factory=RequestCounter)
    components: dict[str, ComponentHealth] = field(default_factory=dict)
    watches: set[WatchHandle] = field(default_factory=set)
    protobuf: ModuleType | None = None
    rbac: ModuleType | None = None
    on_outage: Callable[[float], Any] | None = None

    def __post_init__(self) -> None:
        self.store = Store(history=self.config.history, event_ttl=self.config.event_ttl)
        self.auth = Authenticator(self.store, self.config.admin_token)
        self.protobuf = _optional("protobuf", ("decode", "ProtobufError"))
        self.rbac = _optional("rbac", ("authorize", "forbidden_message", "bootstrap_objects"))
        for name in ("controller-manager", "etcd-0", "scheduler"):
            self.components[name] = ComponentHealth()
        self._seed()

    @property
    def features(self) -> dict[str, bool]:
        return {"protobuf": self.protobuf is not None, "rbac": self.rbac is not None}

    def _seed(self) -> None:
        for ns in INITIAL_NAMESPACES:
            self.create_object(find("namespaces"), {"metadata": {"name": ns}}, "")
        if self.rbac is not None:
            for obj in self.rbac.bootstrap_objects():
                kind = obj.get("kind", "")
                self.create_object(find(kind), copy.deepcopy(obj), "")

    def create_object(self, resource: Resource, obj: dict[str, Any], namespace: str) -> Stored:
        """Store a new object with server-side defaults (no validation; for seeding)."""
        obj = registry.prepare_create(resource, obj, namespace)
        meta = obj["metadata"]
        stored = self.store.put(resource.bucket, object_key(meta.get("namespace", ""),
                                                              meta["name"]), obj)
        if resource.plural == "namespaces":
            self.create_object(find("serviceaccounts"), {"metadata": {"name": "default"}},
                               meta["name"])
        return stored

    # -- authorization ------------------------------------------------------------------

    def lister(self, plural: str, namespace: str | None) -> Iterable[dict[str, Any]]:
        """Stored RBAC objects as dicts, for ``kubesim.rbac.authorize``."""
        bucket = find(plural).bucket
        prefix = f"{namespace}/" if namespace else ""
        return [s.obj for s in self.store.items(bucket, prefix)]

    def authorize(self, user: UserInfo, info: RequestInfo) -> tuple[bool, str]:
        """(allowed, reason): system:masters, then RBAC (or, without kubesim.rbac, any
        authenticated user and public-info paths for anonymous)."""
        if "system:masters" in user.groups:
            return True, ""
        if self.rbac is not None:
            decide = getattr(self.rbac, "decide", None)
            if decide is not None:
                decision = decide(user, info, self.lister)
                return bool(decision.allowed), str(getattr(decision, "reason", ""))
            return bool(self.rbac.authorize(user, info, self.lister)), ""
        if "system:authenticated" in user.groups:
            return True, ""
        # Without RBAC, anonymous users get what system:public-info-viewer grants.
        public = not info.is_resource_request and info.verb == "get" and any(
            info.path == p or info.path.startswith(p + "/") for p in PUBLIC_PATHS
        )
        return public, ""

    def forbidden_message(self, user: UserInfo, info: RequestInfo, reason: str = "") -> str:
        if self.rbac is not None:
            if reason:
                return str(self.rbac.forbidden_message(user, info, reason))
            return str(self.rbac.forbidden_message(user, info))
        if info.is_resource_request:
            group = info.api_group
            what = f'User "{user.name}" cannot {info.verb} resource "{info.resource}"'
            if info.subresource:
                what += f"/{info.subresource}"
            what += f' in API group "{group}"'
            what += f' in the namespace "{info.namespace}"' if info.namespace else (
                " at the cluster scope")
            qualified = f"{info.resource}.{group}" if group else info.resource
            target = f'{qualified} "{info.name}"' if info.name else qualified
            return f"{target} is forbidden: {what}"
        return f'forbidden: User "{user.name}" cannot {info.verb} path "{info.path}"'

    def finalize_namespace_later(self, name: str) -> None:
        asyncio.get_running_loop().call_later(self.config.namespace_finalize_delay,
                                              self.finalize_namespace, name)

    def finalize_namespace(self, name: str) -> None:
        """The namespace controller: delete everything in the namespace, then the namespace."""
        store = self.store
        for bucket in sorted({r.bucket for r in RESOURCES if r.namespaced}):
            for item in list(store.items(bucket, f"{name}/")):
                store.remove(bucket, item.key)
        if store.get("namespaces", name) is not None:
            store.remove("namespaces", name)

    # -- watches --------------------------------------------------------------------------

    def drop_watches(self, predicate: Callable[[WatchHandle], bool]) -> int:
        dropped = 0
        for handle in list(self.watches):
            if predicate(handle):
                handle.abort()
                dropped += 1
        return dropped

    async def expire_events_forever(self, period: float = 1.0) -> None:
        while True:
            await asyncio.sleep(min(period, max(self.config.event_ttl / 4, 0.05)))
            self.store.expire_events()

