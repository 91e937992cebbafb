"""Writes the story's events through the Kubernetes API, each occurrence with a marker.

Every occurrence gets a unique marker ``[ev-NNNNNN]`` at the end of its message: a ``New``
event is created (``count`` 1), a ``Repeat`` updates the same Event object with ``count``
+1, a fresh ``lastTimestamp`` and the new marker, which is what the agent must deliver as a
new occurrence. An occurrence counts as generated once the API server accepted it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from demo.story import NAMESPACES, InvolvedObject, New, Repeat, Story

__all__ = ["EventGenerator", "Generated"]

_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Generated:
    """One occurrence the API server accepted."""

    marker: str
    at: float
    """``time.monotonic()`` when the API server answered."""
    count: int
    """The Event's ``count`` in the version that carries this marker."""
    type: str
    reason: str


class EventGenerator:
    """``warmup()`` until the agents are listening, then ``start()``/``stop()`` the stream of
    ``rate`` occurrences per second (in bursts, as controllers and kubelets emit them)."""

    def __init__(self, api_client: Any, *, rate: float, seed: int | None = None) -> None:
        self._api = client.CoreV1Api(api_client)
        self._story = Story(random.Random(seed))
        self.rate = rate
        self._lock = threading.Lock()
        self._generated: list[Generated] = []
        self._repeatable: dict[str, tuple[dict[str, Any], str]] = {}
        """repeat key -> (the Event as last stored, its message without marker)"""
        self._serial = 0
        self._warmups = 0
        self._last_ns = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at: float | None = None
        self._paced_from = (0.0, 0)
        self.stopped_at: float | None = None

    # -- setup -------------------------------------------------------------------------------

    def create_namespaces(self) -> None:
        for name in NAMESPACES:
            with contextlib.suppress(ApiException):  # 409: it exists
                self._api.create_namespace({"metadata": {"name": name}},
                                           _request_timeout=_TIMEOUT_S)

    def warmup(self) -> str:
        """Create an uncounted event; returns its marker (e.g. ``warmup-3``)."""
        self._warmups += 1
        marker = f"warmup-{self._warmups}"
        ref = InvolvedObject("Namespace", "shop", "", "", "v1")
        body = self._event(New(ref, "Normal", "DemoStarted",
                               "kube-event-agent demo: waiting for the leader's event worker",
                               "kube-event-agent-demo"), marker)
        body["metadata"]["namespace"] = "default"
        with contextlib.suppress(ApiException, HTTPError):
            self._api.create_namespaced_event("default", body, _request_timeout=_TIMEOUT_S,
                                              _preload_content=False)
        return marker

    # -- the stream ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the stream (again after ``stop``: ``--keep`` resumes it)."""
        self._stop.clear()
        self.stopped_at = None
        self._paced_from = (time.monotonic(), self.count)
        if self.started_at is None:
            self.started_at = self._paced_from[0]
        self._thread = threading.Thread(target=self._run, name="demo-generator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * _TIMEOUT_S)
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()

    def _run(self) -> None:
        since, base = self._paced_from
        while not self._stop.is_set():
            for action in self._story.next():
                if self._stop.is_set():
                    break
                self._write(action)
            due = since + (self.count - base) / self.rate
            self._stop.wait(max(0.0, due - time.monotonic()))
        self.stopped_at = time.monotonic()

    def _write(self, action: New | Repeat) -> None:
        try:
            if isinstance(action, New):
                self._create(action)
            else:
                self._repeat(action.key)
        except (ApiException, HTTPError, OSError) as exc:
            self.errors += 1
            status = getattr(exc, "status", None)
            if status == 409 and isinstance(action, Repeat):
                self._refresh(action.key)

    def _refresh(self, key: str) -> None:
        """Re-read an Event whose stored version is stale (an update answered too late)."""
        stored, base = self._repeatable[key]
        meta = stored["metadata"]
        with contextlib.suppress(ApiException, HTTPError, OSError):
            response = self._api.read_namespaced_event(
                meta["name"], meta["namespace"], _request_timeout=_TIMEOUT_S,
                _preload_content=False)
            self._repeatable[key] = (orjson.loads(response.data), base)

    def _create(self, new: New) -> None:
        marker = self._next_marker()
        body = self._event(new, marker)
        response = self._api.create_namespaced_event(
            body["metadata"]["namespace"], body, _request_timeout=_TIMEOUT_S,
            _preload_content=False)
        stored = orjson.loads(response.data)
        if new.repeat_key:
            self._repeatable[new.repeat_key] = (stored, new.message)
        self._record(marker, 1, new.type, new.reason)

    def _repeat(self, key: str) -> None:
        if key not in self._repeatable:  # its creation failed
            return
        stored, base = self._repeatable[key]
        marker = self._next_marker()
        body = {**stored, "count": int(stored.get("count") or 1) + 1,
                "message": f"{base} [{marker}]", "lastTimestamp": _now()}
        meta = body["metadata"]
        response = self._api.replace_namespaced_event(
            meta["name"], meta["namespace"], body, _request_timeout=_TIMEOUT_S,
            _preload_content=False)
        updated = orjson.loads(response.data)
        self._repeatable[key] = (updated, base)
        self._record(marker, int(updated.get("count") or 0), body["type"], body["reason"])

    def _next_marker(self) -> str:
        self._serial += 1
        return f"ev-{self._serial:06d}"

    def _record(self, marker: str, count: int, type_: str, reason: str) -> None:
        with self._lock:
            self._generated.append(Generated(marker, time.monotonic(), count, type_, reason))

    def _event(self, new: New, marker: str) -> dict[str, Any]:
        # Named like the real recorder does (<object>.<hex nanoseconds>), unique per event.
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        now = _now()
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{new.involved.name or 'cluster'}.{self._last_ns:x}",
                         "namespace": new.involved.namespace or "default"},
            "involvedObject": new.involved.reference(),
            "type": new.type,
            "reason": new.reason,
            "message": f"{new.message} [{marker}]",
            "source": {"component": new.component, **({"host": new.host} if new.host else {})},
            "reportingComponent": new.component,
            "reportingInstance": new.host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    # -- readers -------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self._generated)

    def generated(self) -> list[Generated]:
        with self._lock:
            return list(self._generated)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
