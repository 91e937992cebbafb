"""``KubeSim``: kubesim in-process, on a background thread with its own event loop.

    with KubeSim(tls=True) as sim:
        api = kubernetes.client.CoreV1Api(sim.api_client())
        sim.inject_fault(status=500, path="/configmaps", verbs=["update"], times=1)

The admin methods mirror the ``/_kubesim/`` HTTP API one to one (see kubesim.admin) and
run on the server's loop, so they are safe to call from any thread. ``store`` is the live
store: read it for assertions; write through ``create``/HTTP, never directly.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubesim import registry
from kubesim.admin import Admin
from kubesim.cluster import Cluster, ServerConfig
from kubesim.kubeconfig import write_kubeconfig
from kubesim.resources import find
from kubesim.server import ApiServer
from kubesim.store import Store, object_key
from kubesim.tls import make_tls
from kubesim.validation import validate

__all__ = ["KubeSim"]

T = TypeVar("T")


class KubeSim:
    """A running kubesim; use as a context manager (or call start/stop)."""

    def __init__(
        self,
        *,
        tls: bool = False,
        admin_token: str | None = None,
        history: int = 10_000,
        event_ttl: float = 3600.0,
        bookmark_interval: float = 60.0,
        port: int = 0,
        kubeconfig_path: str | Path | None = None,
    ) -> None:
        self.admin_token = admin_token or secrets.token_urlsafe(24)
        self._config = ServerConfig(port=port, admin_token=self.admin_token, history=history,
                                    event_ttl=event_ttl, tls=tls,
                                    bookmark_interval=bookmark_interval)
        self._kubeconfig_path = kubeconfig_path
        self._workdir = Path(tempfile.mkdtemp(prefix="kubesim-"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ApiServer | None = None
        self.ca_file: str | None = None
        self._ca_pem = ""
        self.kubeconfig = ""

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> KubeSim:
        ssl_context = None
        if self._config.tls:
            files = make_tls(self._workdir)
            self.ca_file, self._ca_pem = str(files.ca_file), files.ca_pem
            ssl_context = files.context
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = ApiServer(self._config, ssl_context, self._ca_pem)
                loop.run_until_complete(self._server.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._server.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name="kubesim", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        self.kubeconfig = self.kubeconfig_for(self.admin_token, self._kubeconfig_path)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)
        self._thread = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> KubeSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access ---------------------------------------------------------------------------------

    @property
    def server(self) -> ApiServer:
        if self._server is None:
            raise RuntimeError("kubesim is not running")
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def cluster(self) -> Cluster:
        return self.server.cluster

    @property
    def store(self) -> Store:
        return self.server.cluster.store

    @property
    def features(self) -> dict[str, bool]:
        """Which optional modules are active: {"protobuf": bool, "rbac": bool}."""
        return self.cluster.features

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the server's loop and return its result (awaits coroutines)."""
        assert self._loop is not None

        async def run() -> T:
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def api_client(self, token: str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` (admin token by default; "" for anonymous)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        token = self.admin_token if token is None else token
        if token:
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        if self.ca_file:
            cfg.ssl_ca_cert = self.ca_file
        return client.ApiClient(cfg)

    def kubeconfig_for(self, token: str | None, path: str | Path | None = None,
                       namespace: str = "default") -> str:
        """Write a kubeconfig for ``token`` (None: no credentials) and return its path."""
        if path is None:
            path = self._workdir / f"kubeconfig-{secrets.token_hex(4)}"
        return write_kubeconfig(path, self.url, token, self._ca_pem, namespace,
                                user="kubesim-admin" if token == self.admin_token else "kubesim")

    # -- admin API mirror -------------------------------------------------------------------

    @property
    def _admin(self) -> Admin:
        return self.server.admin

    def info(self) -> dict[str, Any]:
        return self.call(self._admin.info)

    def counts(self) -> dict[str, Any]:
        """Requests per client by verb and resource (see RequestCounter.snapshot)."""
        return self.call(self._admin.counts)

    def reset_counts(self) -> None:
        self.call(self._admin.reset_counts)

    def faults(self) -> list[dict[str, Any]]:
        return self.call(self._admin.faults)

    def inject_fault(self, **spec: Any) -> str:
        """Keyword arguments of kubesim.faults.FaultSpec: status, rate, path (regex), verbs,
        user (regex), duration, latency, drop_watches, drop_after, times, message."""
        return self.call(self._admin.inject_fault, **spec)

    def remove_fault(self, fault_id: str) -> bool:
        return self.call(self._admin.remove_fault, fault_id)

    def clear_faults(self) -> None:
        self.call(self._admin.clear_faults)

    def pause(self, seconds: float, mode: str = "error") -> None:
        self.call(self._admin.pause, seconds, mode)

    def compact(self) -> int:
        return self.call(self._admin.compact)

    def component_health(self) -> dict[str, dict[str, Any]]:
        return self.call(self._admin.component_health)

    def set_component_health(self, name: str, healthy: bool, message: str = "") -> None:
        self.call(self._admin.set_component_health, name, healthy, message)

    def issue_token(self, namespace: str, service_account: str) -> str:
        return self.call(self._admin.issue_token, namespace, service_account)

    def outage(self, seconds: float) -> None:
        self.call(self._admin.outage, seconds)

    def stop_listening(self) -> None:
        """Close the port and all connections; the store survives (resume_listening)."""
        self.call(self.server.stop_listening)

    def resume_listening(self) -> None:
        self.call(self.server.resume_listening)

    # -- direct object access (bypasses HTTP, authn and counting) --------------------------

    def get(self, resource: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """The stored object (core/v1 form for events) or None."""
        res = find(resource)
        stored = self.call(self.store.get, res.bucket,
                           object_key(namespace if res.namespaced else "", name))
        return None if stored is None else stored.copy()

    def objects(self, resource: str, namespace: str = "") -> list[dict[str, Any]]:
        res = find(resource)
        prefix = f"{namespace}/" if res.namespaced and namespace else ""
        return self.call(lambda: [s.copy() for s in self.store.items(res.bucket, prefix)])

    def create(self, resource: str, obj: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        """Create like a POST would (defaults, validation); ValueError on a rejected object."""
        res = find(resource)

        def run() -> dict[str, Any]:
            prepared = registry.prepare_create(res, copy.deepcopy(obj),
                                               namespace if res.namespaced else "")
            errs = validate(res, prepared)
            if errs:
                raise ValueError("; ".join(str(e) for e in errs))
            key = object_key(prepared["metadata"].get("namespace", ""),
                             prepared["metadata"]["name"])
            if self.store.get(res.bucket, key) is not None:
                raise ValueError(f"{res.plural} {key!r} already exists")
            return self.store.put(res.bucket, key, prepared).copy()

        return self.call(run)

    def create_many(self, resource: str, objs: list[dict[str, Any]], namespace: str = ""
                    ) -> int:
        """Create many objects in one hop onto the loop (benchmarks, big fixtures).

        No validation, and ``objs`` are consumed (modified in place) for speed."""
        res = find(resource)

        def run() -> int:
            for obj in objs:
                prepared = registry.prepare_create(res, obj, namespace if res.namespaced else "")
                key = object_key(prepared["metadata"].get("namespace", ""),
                                 prepared["metadata"]["name"])
                self.store.put(res.bucket, key, prepared)
            return len(objs)

        return self.call(run)
