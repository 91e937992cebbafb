"""Raw JSON access to the Kubernetes API through the official client's connection machinery.

The official ``kubernetes`` package loads kubeconfig / in-cluster credentials and builds a
TLS-configured urllib3 pool; we reuse exactly that and skip its model layer: every call
returns decoded JSON (orjson) and every non-2xx answer becomes one ``ApiError`` carrying the
server's ``Status``, so callers branch on ``code`` / ``reason`` (as lightkube does), never on
message text. Transport failures are ``ApiError`` too, with ``code == 0``.

Exceptions::

    ApiError            a Status from the server (code >= 400) or no answer at all (code 0)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig

from workers.settings import KubeSettings

__all__ = ["ApiError", "KubeApi", "load_configuration", "watch_lines"]

_JSON = "application/json"


@dataclass(frozen=True)
class ApiError(Exception):
    """A failed API call: the server's Status, or ``code == 0`` when nothing came back."""

    code: int
    reason: str
    message: str
    status: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    text: str = field(default="", repr=False, compare=False)
    """The whole answer when it is not a ``Status`` (e.g. a failed ``/readyz?verbose``)."""

    def __str__(self) -> str:
        if self.code == 0:
            return f"API server unreachable: {self.message}"
        return f"{self.code} {self.reason}: {self.message}"

    @classmethod
    def from_response(cls, status_code: int, body: bytes) -> ApiError:
        try:
            status = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            status = {}
        if not isinstance(status, dict) or status.get("kind") != "Status":
            text = body[:200].decode("utf-8", "replace").strip()
            return cls(status_code, "", text or f"HTTP {status_code}", {},
                       body.decode("utf-8", "replace"))
        return cls(
            int(status.get("code") or status_code),
            str(status.get("reason") or ""),
            str(status.get("message") or ""),
            status,
        )


def load_configuration(settings: KubeSettings) -> kclient.Configuration:
    """Credentials as client-go finds them: explicit path, else in-cluster, else kubeconfig."""
    configuration = kclient.Configuration()
    if settings.kubeconfig_path:
        kconfig.load_kube_config(
            config_file=settings.kubeconfig_path, client_configuration=configuration
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        kconfig.load_incluster_config(client_configuration=configuration)
    else:
        kconfig.load_kube_config(client_configuration=configuration)
    # Retries are ours to decide (elector deadlines, watch backoff); urllib3's silent
    # re-tries would stretch a call past the renew deadline.
    configuration.retries = False
    return configuration


class KubeApi:
    """A thin JSON client: one urllib3 pool, the official client's TLS and auth setup."""

    def __init__(
        self,
        configuration: kclient.Configuration,
        *,
        timeout_s: float = 10.0,
        user_agent: str = "kube-event-agent",
    ) -> None:
        self._configuration = configuration
        self._api_client = kclient.ApiClient(configuration)
        self._pool: urllib3.PoolManager = self._api_client.rest_client.pool_manager
        self._host = configuration.host.rstrip("/")
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self.last_answer: float | None = None
        """``time.monotonic()`` of the last response of any status: the server is there."""

    @classmethod
    def from_settings(cls, settings: KubeSettings, *, user_agent: str) -> KubeApi:
        return cls(
            load_configuration(settings),
            timeout_s=settings.client_timeout_s,
            user_agent=user_agent,
        )

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": _JSON, "User-Agent": self.user_agent}
        # auth_settings() runs the token refresh hook (rotated in-cluster tokens).
        for auth in self._configuration.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        if not query:
            return self._host + path
        clean = {k: _query_value(v) for k, v in query.items() if v is not None}
        return f"{self._host}{path}?{urlencode(clean)}"

    def open(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | urllib3.Timeout | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Send a request; return the unread response (2xx only). Used for watch streams."""
        payload = None
        if body is not None:
            payload = body if isinstance(body, bytes) else orjson.dumps(body)
            content_type = content_type or _JSON
        try:
            response = self._pool.request(
                method,
                self.url(path, query),
                body=payload,
                headers=self._headers(content_type),
                timeout=timeout if timeout is not None else self.timeout_s,
                preload_content=False,
                retries=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "Unavailable", _describe(exc)) from None
        self.last_answer = time.monotonic()
        if not 200 <= response.status < 300:
            try:
                data = response.read()
            except (urllib3.exceptions.HTTPError, OSError):
                data = b""
            finally:
                response.release_conn()
            raise ApiError.from_response(response.status, data)
        return response

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One call, whole answer decoded as JSON."""
        response = self.open(
            method, path, query=query, body=body, content_type=content_type, timeout=timeout
        )
        try:
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "Unavailable", _describe(exc)) from None
        finally:
            response.release_conn()
        try:
            return orjson.loads(data) if data else {}
        except orjson.JSONDecodeError:
            # Non-JSON 2xx bodies exist (e.g. /readyz?verbose): hand back the text.
            return data.decode("utf-8", "replace")

    def get(self, path: str, query: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        return self.request("GET", path, query=query, **kw)

    def create(self, path: str, body: Mapping[str, Any], **kw: Any) -> Any:
        return self.request("POST", path, body=body, **kw)

    def replace(self, path: str, body: Mapping[str, Any], **kw: Any) -> Any:
        return self.request("PUT", path, body=body, **kw)

    def close(self) -> None:
        self._pool.clear()


def watch_lines(response: urllib3.BaseHTTPResponse, chunk_size: int = 65536) -> Iterator[bytes]:
    """Split a watch stream into its JSON lines, reading large chunks (the fast path)."""
    pending = b""
    for chunk in response.stream(chunk_size, decode_content=True):
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line:
                yield line
    if pending.strip():
        yield pending


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a transport failure (no headers, no URLs' auth)."""
    reason = getattr(exc, "reason", None)
    text = str(reason or exc)
    return f"{type(exc).__name__}: {text}"[:300]
