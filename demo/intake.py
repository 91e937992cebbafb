"""The demo's Datadog intake: real HTTP on 127.0.0.1, counting what the agents deliver.

Accepts what the agent's forwarder sends (``POST /intake/`` events and
``POST /api/v1/check_run`` service checks, deflate- or gzip-compressed JSON) and answers 202
as Datadog does. Every occurrence the demo generates carries a marker ``[ev-NNNNNN]`` in its
message; the intake records each appearance of a marker with the count printed on its line
(a bundled Datadog event says ``<count> **<Reason>**: <message>``, so one Kubernetes event
sent twice in one flush shows as a doubled count, not as a second line). The sender is the
payload's ``internalHostname``: the demo gives every replica its own.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
import threading
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

__all__ = ["MARKER_RE", "Appearance", "Arrival", "DemoIntake", "IntakeSnapshot", "Received"]

MARKER_RE = re.compile(r"\[(ev|warmup)-(\d+)\]")
_COUNT_RE = re.compile(r"^\s*(\d+) \*\*")
_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Appearance:
    """One marker seen in one Datadog event."""

    count: int | None
    """The count on the marker's line (bundled format); None when the text has none."""
    at: float
    """``time.monotonic()`` on arrival."""
    sender: str


@dataclass(frozen=True, slots=True)
class Arrival:
    """One ``/intake/`` payload: when, from whom, how many counted markers it carried."""

    at: float
    sender: str
    markers: int


@dataclass(frozen=True, slots=True)
class Received:
    """One Datadog event, for the live view."""

    at: float
    sender: str
    title: str
    alert_type: str
    first_line: str


@dataclass(frozen=True, slots=True)
class IntakeSnapshot:
    payloads: int
    datadog_events: int
    service_checks: int
    check_statuses: dict[str, int]
    """Last status per service check name (0 OK, 1 warning, 2 critical, 3 unknown)."""
    rejected: int
    """Payloads that were not valid compressed JSON (answered 400)."""
    delivered: int
    """Distinct counted markers seen."""
    recent: tuple[Received, ...]
    first_event_at: float | None
    """When the first payload carrying a marker (warm-up or counted) arrived."""


@dataclass
class _State:
    appearances: dict[str, list[Appearance]] = field(default_factory=dict)
    warmups: set[str] = field(default_factory=set)
    arrivals: list[Arrival] = field(default_factory=list)
    recent: deque[Received] = field(default_factory=lambda: deque(maxlen=6))
    checks: dict[str, int] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    first_event_at: float | None = None


class DemoIntake:
    """Start with ``start()``; ``url`` is ``http://127.0.0.1:<port>``; all readers are
    thread-safe (the server runs on its own thread and event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DemoIntake:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                if self._runner is not None:
                    loop.run_until_complete(self._runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=main, name="demo-intake", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._thread = None

    async def _serve(self) -> None:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/intake/", self._events)
        app.router.add_post("/api/v1/check_run", self._checks)
        # Raw bodies: the compression is part of what the agent must get right.
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    # -- handlers --------------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.Response:
        body = await _decoded(request)
        if not isinstance(body, dict) or not isinstance(body.get("events"), dict):
            return self._reject()
        at = time.monotonic()
        sender = str(body.get("internalHostname") or "?")
        events = [e for group in body["events"].values() if isinstance(group, list)
                  for e in group if isinstance(e, dict)]
        with self._lock:
            state = self._state
            state.counters["payloads"] += 1
            state.counters["datadog_events"] += len(events)
            counted = 0
            warmups = len(state.warmups)
            for event in events:
                counted += self._record(state, event, at, sender)
            state.arrivals.append(Arrival(at, sender, counted))
            marked = counted or len(state.warmups) > warmups
            if marked and state.first_event_at is None:
                state.first_event_at = at
        return web.json_response({"status": "ok"}, status=202)

    @staticmethod
    def _record(state: _State, event: dict[str, Any], at: float, sender: str) -> int:
        text = str(event.get("msg_text") or "")
        counted = 0
        first_line = ""
        for line in text.splitlines():
            found = MARKER_RE.findall(line)
            if not found:
                continue
            first_line = first_line or line
            count_match = _COUNT_RE.match(line)
            count = int(count_match.group(1)) if count_match else None
            for prefix, number in found:
                marker = f"{prefix}-{number}"
                if prefix == "warmup":
                    state.warmups.add(marker)
                    continue
                state.appearances.setdefault(marker, []).append(Appearance(count, at, sender))
                counted += 1
        state.recent.append(Received(at, sender, str(event.get("msg_title") or ""),
                                     str(event.get("alert_type") or ""), first_line.strip()))
        return counted

    async def _checks(self, request: web.Request) -> web.Response:
        body = await _decoded(request)
        if not isinstance(body, list):
            return self._reject()
        with self._lock:
            self._state.counters["service_checks"] += len(body)
            for check in body:
                if isinstance(check, dict):
                    self._state.checks[str(check.get("check"))] = int(check.get("status", 3))
        return web.json_response({"status": "ok"}, status=202)

    def _reject(self) -> web.Response:
        with self._lock:
            self._state.counters["rejected"] += 1
        return web.json_response({"errors": ["payload is not compressed JSON"]}, status=400)

    # -- readers ---------------------------------------------------------------------------

    def snapshot(self) -> IntakeSnapshot:
        with self._lock:
            s = self._state
            return IntakeSnapshot(
                payloads=s.counters["payloads"],
                datadog_events=s.counters["datadog_events"],
                service_checks=s.counters["service_checks"],
                check_statuses=dict(s.checks),
                rejected=s.counters["rejected"],
                delivered=len(s.appearances),
                recent=tuple(s.recent),
                first_event_at=s.first_event_at,
            )

    def appearances(self) -> dict[str, list[Appearance]]:
        """Every counted marker seen, with each of its appearances (a copy)."""
        with self._lock:
            return {marker: list(seen) for marker, seen in self._state.appearances.items()}

    def seen_warmup(self, marker: str) -> bool:
        with self._lock:
            return marker in self._state.warmups

    def first_arrival(self, *, after: float, sender: str) -> Arrival | None:
        """The first payload with counted markers from ``sender`` after ``after``."""
        with self._lock:
            for arrival in self._state.arrivals:
                if arrival.at > after and arrival.markers and arrival.sender == sender:
                    return arrival
        return None


async def _decoded(request: web.Request) -> Any:
    raw = await request.read()
    encoding = request.headers.get("Content-Encoding", "").lower()
    try:
        if encoding == "deflate":
            raw = zlib.decompress(raw)
        elif encoding == "gzip":
            raw = gzip.decompress(raw)
        return orjson.loads(raw)
    except (zlib.error, OSError, EOFError, orjson.JSONDecodeError):
        return None
