"""The Datadog intake client shared by the events and control-plane workers.

One blocking call per batch: ``deliver_events(events, stop)`` /
``deliver_service_checks(checks, stop)`` returns a ``Delivery`` once the intake has
answered for every item, or the stop flag is set. Responses, as the Agent's forwarder:

    2xx ............ acknowledged (the caller may advance its token)
    400, 404 ....... payload logged with its reason and skipped
    413 ............ split in halves and resent; a single item still 413 is skipped
    401, 403 ....... forbidden (invalid API key): returned at once; later calls first wait
                     ``forbidden_pause_s`` so a bad key never hammers the intake
    anything else .. 408/429/5xx/3xx/other 4xx and network errors: retried with the
                     backoff policy for ever. The caller is blocked meanwhile, which is
                     the backpressure: it reads no further events.

With no ``api_key`` the client writes one JSON line per Datadog event / service check to
stdout instead, and that counts as acknowledged. The API key travels in the ``DD-API-KEY``
header only and is scrubbed from every log line and error string this module produces.
"""

from __future__ import annotations

import enum
import ipaddress
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote

import orjson
import urllib3
from loguru import logger

from workers import payloads
from workers.backoff import INTAKE_BACKOFF, Attempts, Backoff
from workers.settings import IntakeSettings

__all__ = ["Delivery", "IntakeClient", "Outcome", "intake_url", "user_agent"]

EVENTS_PATH = "/intake/"
CHECKS_PATH = "/api/v1/check_run"
_SKIP = frozenset({400, 404})
_FORBIDDEN = frozenset({401, 403})


def _version() -> str:
    try:
        return metadata.version("kube-event-agent")
    except metadata.PackageNotFoundError:
        return "0.0.0"


VERSION = _version()


def user_agent() -> str:
    """``kube-event-agent/<version>``, the User-Agent of every request."""
    return f"kube-event-agent/{VERSION}"


def intake_url(settings: IntakeSettings) -> str:
    """``dd_url`` if set, else ``https://app.<site>`` (the Agent's default before it adds its
    own version as ``<x-y-z>-app.agent.<site>``, a prefix that belongs to the Agent)."""
    if settings.dd_url:
        return settings.dd_url.rstrip("/")
    return f"https://app.{settings.site.strip().strip('.')}"


class StatsSink(Protocol):
    """Where counters go: a worker's ``WorkerContext`` (not imported: loop imports us)."""

    def total(self, key: str, value: float) -> None: ...

    def gauge(self, key: str, value: float) -> None: ...


class Outcome(enum.Enum):
    ACKNOWLEDGED = "acknowledged"
    """Every item got a 2xx (or went to stdout)."""
    SKIPPED = "skipped"
    """All answered, some items given up on (400/404/single-item 413): logged, not retried."""
    FORBIDDEN = "forbidden"
    """401/403: invalid API key. Keep the token; mark the worker unhealthy; call again."""
    STOPPED = "stopped"
    """The stop flag was set before every item was answered."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one ``deliver_*`` call."""

    outcome: Outcome
    acknowledged: int = 0
    """Items (Datadog events or service checks) the intake answered 2xx for."""
    skipped: int = 0
    detail: str = ""
    """One line, no secrets: why items were skipped, or the forbidden answer."""

    @property
    def done(self) -> bool:
        """The intake is done with these items: a token covering them may advance."""
        return self.outcome in (Outcome.ACKNOWLEDGED, Outcome.SKIPPED)


class IntakeClient:
    """A keep-alive HTTP client to one intake; one caller at a time; ``stats()`` any time."""

    def __init__(
        self,
        settings: IntakeSettings,
        *,
        backoff: Backoff = INTAKE_BACKOFF,
        forbidden_pause_s: float = 300.0,
        max_items: int = payloads.MAX_PAYLOAD_ITEMS,
        max_bytes: int = payloads.MAX_PAYLOAD_BYTES,
        compress_level: int = 1,
        stdout: BinaryIO | None = None,
        ca_certs: str | None = None,
    ) -> None:
        self.url = intake_url(settings)
        self.hostname = settings.hostname
        self.backoff = backoff
        self.forbidden_pause_s = forbidden_pause_s
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.compress_level = compress_level
        api_key = settings.api_key.strip()  # as the Agent: keys read from files end in "\n"
        if api_key and not (api_key.isascii() and api_key.isprintable()):
            raise ValueError("api_key: contains characters not allowed in an HTTP header")
        self._stdout = stdout
        self._lock = threading.Lock()
        self._forbidden_until = 0.0
        self._forbidden = False
        self._stats: Counter[str] = Counter()
        self._secrets = [s for s in (api_key,) if s]
        self._headers = {
            "DD-API-KEY": api_key,
            "Content-Type": "application/json",
            "Content-Encoding": "deflate",
            "User-Agent": user_agent(),
            "DD-Agent-Version": VERSION,
        }
        self._pool = self._make_pool(settings, ca_certs) if api_key else None

    def __repr__(self) -> str:
        target = self.url if self._pool is not None else "stdout"
        return f"IntakeClient({target}, forbidden={self.forbidden})"

    def __enter__(self) -> IntakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()

    @property
    def forbidden(self) -> bool:
        """The last authenticated answer was 401/403 (no 2xx since)."""
        return self._forbidden

    def counters(self) -> dict[str, float]:
        """Monotonic counters (running totals) for /metrics."""
        with self._lock:
            return {k: float(v) for k, v in self._stats.items()}

    def stats(self) -> dict[str, float]:
        """The counters plus the ``intake_forbidden`` gauge (1 while the key is refused)."""
        return {**self.counters(), "intake_forbidden": 1.0 if self._forbidden else 0.0}

    def report(self, ctx: StatsSink) -> None:
        """Hand the counters and the forbidden gauge to a worker's heartbeat stats."""
        for key, value in self.counters().items():
            ctx.total(key, value)
        ctx.gauge("intake_forbidden", 1.0 if self._forbidden else 0.0)

    def deliver_events(
        self,
        events: Sequence[Mapping[str, Any]],
        stop: threading.Event,
        *,
        on_wait: Callable[[], None] | None = None,
    ) -> Delivery:
        """POST Datadog events to ``/intake/`` in payloads within the size limits.

        ``on_wait`` is called about once a second while blocked in a retry or forbidden
        pause (e.g. to send heartbeats); the HTTP request itself is bounded by ``timeout_s``.
        """
        if self._pool is None:
            return self._to_stdout(events)
        hostname = self.hostname
        whole = payloads.whole_events_payload(events, hostname, self.max_items, self.max_bytes)
        if whole is not None:  # the usual batch: one payload, one orjson call (413: halves)
            return self._deliver(EVENTS_PATH, [events], lambda part: whole if part is events
                                 else payloads.events_body(part, hostname), stop, on_wait)
        encoded = payloads.encode_events(events)
        batches = payloads.batches(encoded, max_items=self.max_items, max_bytes=self.max_bytes)
        return self._deliver(EVENTS_PATH, batches,
                             lambda items: payloads.events_payload(items, hostname), stop, on_wait)

    def deliver_service_checks(
        self,
        checks: Sequence[Mapping[str, Any]],
        stop: threading.Event,
        *,
        on_wait: Callable[[], None] | None = None,
    ) -> Delivery:
        """POST service checks (``payloads.service_check`` records) to ``/api/v1/check_run``."""
        if self._pool is None:
            return self._to_stdout(checks)
        encoded = payloads.encode_checks(checks)
        batches = payloads.batches(encoded, max_items=self.max_items, max_bytes=self.max_bytes)
        return self._deliver(CHECKS_PATH, batches, payloads.service_checks_payload, stop, on_wait)

    # -- internals ---------------------------------------------------------------------

    def _deliver(
        self,
        path: str,
        payload_items: list[Sequence[Any]],
        body: Callable[[Sequence[Any]], bytes],
        stop: threading.Event,
        on_wait: Callable[[], None] | None,
    ) -> Delivery:
        acked = skipped = 0
        reasons: list[str] = []
        pending = payload_items[::-1]  # a stack: 413 halves go on top, in order
        while pending:
            batch = pending.pop()
            status, reason = self._post(path, body(batch), len(batch), stop, on_wait)
            if status is None:
                return Delivery(Outcome.STOPPED, acked, skipped, "stopped while retrying")
            if 200 <= status < 300:
                acked += len(batch)
                self._count("intake_items_acknowledged_total", len(batch))
            elif status in _FORBIDDEN:
                return Delivery(Outcome.FORBIDDEN, acked, skipped, reason)
            elif status == 413 and len(batch) > 1:
                half = len(batch) // 2
                pending += [batch[half:], batch[:half]]
                self._count("intake_payloads_split_total")
            else:
                skipped += len(batch)
                reasons.append(reason)
                self._count("intake_items_skipped_total", len(batch))
                logger.error("intake skipped {} item(s) for {}: {}", len(batch), path, reason)
        if skipped:
            return Delivery(Outcome.SKIPPED, acked, skipped, "; ".join(reasons)[:500])
        return Delivery(Outcome.ACKNOWLEDGED, acked)

    def _post(
        self,
        path: str,
        raw: bytes,
        count: int,
        stop: threading.Event,
        on_wait: Callable[[], None] | None,
    ) -> tuple[int | None, str]:
        """Send one payload until it gets a final answer: (status, reason); None if stopped."""
        data = zlib.compress(raw, self.compress_level)
        attempts = Attempts(self.backoff)
        while True:
            pause = self._forbidden_until - time.monotonic()
            if pause > 0 and self._sleep(pause, stop, on_wait):
                return None, ""
            if stop.is_set():
                return None, ""
            self._count("intake_payloads_total")
            self._count("intake_bytes_total", len(data))
            self._count("intake_bytes_uncompressed_total", len(raw))
            retry_after = 0.0
            try:
                resp = self._pool.urlopen(
                    "POST", self.url + path, body=data, headers=self._headers,
                    redirect=False, retries=False,
                )  # fmt: skip
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self._count("intake_connection_errors_total")
                problem = self._scrub(f"{type(exc).__name__}: {exc}")
            else:
                status = resp.status
                self._count(f"intake_responses_{status}_total")
                if 200 <= status < 300:
                    self._forbidden = False
                    self._count("intake_payloads_acknowledged_total")
                    return status, ""
                problem = f"HTTP {status} {self._scrub(_excerpt(resp.data))}"
                if status in _FORBIDDEN:
                    self._forbidden = True
                    self._forbidden_until = time.monotonic() + self.forbidden_pause_s
                    logger.error(
                        "intake answered {} for {}: invalid API key? next try in {:.0f} s",
                        status, path, self.forbidden_pause_s,
                    )  # fmt: skip
                    return status, f"{problem} (invalid API key)"
                if status in _SKIP or status == 413:
                    return status, problem
                retry_after = _retry_after(resp.headers.get("Retry-After"))
            delay = max(attempts.next_delay(), min(retry_after, self.backoff.cap_s))
            self._count("intake_retries_total")
            logger.warning(
                "intake {} failed ({} item(s)): {}; retry {} in {:.2f} s",
                path, count, problem, attempts.count, delay,
            )  # fmt: skip
            if self._sleep(delay, stop, on_wait):
                return None, ""

    def _to_stdout(self, items: Sequence[Mapping[str, Any]]) -> Delivery:
        lines = b"".join(orjson.dumps(item) + b"\n" for item in items)
        out = self._stdout if self._stdout is not None else sys.stdout.buffer
        with self._lock:
            out.write(lines)
            out.flush()
        self._count("intake_stdout_lines_total", len(items))
        self._count("intake_items_acknowledged_total", len(items))
        return Delivery(Outcome.ACKNOWLEDGED, len(items))

    def _sleep(
        self, seconds: float, stop: threading.Event, on_wait: Callable[[], None] | None
    ) -> bool:
        """Wait ``seconds`` in slices of at most 1 s, calling ``on_wait``; True if stopped."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if on_wait is not None:
                on_wait()
            if stop.wait(min(left, 1.0)):
                return True
        return stop.is_set()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _make_pool(self, settings: IntakeSettings, ca_certs: str | None) -> urllib3.PoolManager:
        timeout = urllib3.Timeout(connect=min(10.0, settings.timeout_s), read=settings.timeout_s)
        options: dict[str, Any] = {
            "num_pools": 2, "maxsize": 2, "timeout": timeout, "retries": False,
            "cert_reqs": "CERT_REQUIRED", "ca_certs": ca_certs,
        }  # fmt: skip
        target = urllib3.util.parse_url(self.url)
        proxy = settings.proxy_https if target.scheme == "https" else settings.proxy_http
        if not proxy or _bypasses_proxy(target.host or "", target.port, settings.no_proxy):
            return urllib3.PoolManager(**options)
        if "://" not in proxy:
            proxy = "http://" + proxy
        parsed = urllib3.util.parse_url(proxy)
        headers = None
        if parsed.auth:
            self._secrets += [s for s in parsed.auth.split(":", 1) if len(s) > 3]
            headers = urllib3.make_headers(proxy_basic_auth=unquote(parsed.auth))
        proxy = parsed._replace(auth=None).url
        logger.info("intake {} through proxy {}", self.url, proxy)
        return urllib3.ProxyManager(proxy, proxy_headers=headers, **options)


def _bypasses_proxy(host: str, port: int | None, no_proxy: Sequence[str]) -> bool:
    """Go's ``NO_PROXY`` rules (what the Agent follows): ``*``, host[:port], domain suffix,
    ``.domain``, IP or CIDR."""
    host = host.lower().strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for entry in no_proxy:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if ip is not None and "/" in entry:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip("*")
        if host == name.lstrip(".") or (name and host.endswith("." + name.lstrip("."))):
            return True
    return False


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def _excerpt(body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace").replace("\n", " ").strip()
    return text or "(empty body)"
