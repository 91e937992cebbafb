"""Objects, one global resourceVersion, and bounded per-resource change history.

Every write gets the next integer resourceVersion (like an etcd revision) and is
serialised exactly once with orjson; lists and every watcher reuse those bytes. Each
bucket (resource) keeps its last ``history`` changes — the watch cache's window — so a
watch or a paginated list can resume from an older resourceVersion, and answers 410
once that resourceVersion has left the window or was compacted away.

The store lives on the server's event loop thread; other threads go through
``kubesim.runner.KubeSim`` which hops onto that loop.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from kubesim.selectors import object_fields

__all__ = ["NOTIFY_DELAY", "Bucket", "Change", "Store", "Stored", "TooOld"]

NOTIFY_DELAY = 0.003
"""Seconds between a write and waking that resource's watchers (batches bursts)."""


class TooOld(Exception):
    """The requested resourceVersion is older than the retained history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class Stored:
    """One version of an object: its dict (never mutated after storing) and JSON bytes."""

    __slots__ = ("_alt", "_fields", "key", "obj", "raw", "rv")

    def __init__(self, key: str, obj: dict[str, Any], rv: int) -> None:
        self.key = key
        self.obj = obj
        self.rv = rv
        self.raw = orjson.dumps(obj)
        self._fields: dict[str, str] | None = None
        self._alt: dict[str, bytes] | None = None

    @property
    def labels(self) -> dict[str, str]:
        return self.obj["metadata"].get("labels") or {}

    def fields(self, bucket: str) -> dict[str, str]:
        if self._fields is None:
            self._fields = object_fields(bucket, self.obj)
        return self._fields

    def alt(self, name: str, convert: Callable[[dict[str, Any]], dict[str, Any]]) -> bytes:
        """The bytes of another representation (e.g. events.k8s.io/v1), built once."""
        if self._alt is None:
            self._alt = {}
        raw = self._alt.get(name)
        if raw is None:
            raw = self._alt[name] = orjson.dumps(convert(self.obj))
        return raw

    def copy(self) -> dict[str, Any]:
        """A fresh, mutable deep copy of the object."""
        return orjson.loads(self.raw)


class Change:
    """One entry of a bucket's history: ADDED / MODIFIED / DELETED at ``rv``."""

    __slots__ = ("_line", "obj", "prev", "rv", "type")

    def __init__(self, type_: str, obj: Stored, prev: Stored | None) -> None:
        self.type = type_
        self.obj = obj
        self.prev = prev
        self.rv = obj.rv
        self._line: bytes | None = None

    def line(self) -> bytes:
        """The watch event line as every watcher of this bucket receives it."""
        if self._line is None:
            self._line = b'{"type":"%s","object":%s}\n' % (self.type.encode(), self.obj.raw)
        return self._line


class Bucket:
    """The objects of one resource, sorted keys for paging, and its change history."""

    __slots__ = ("complete_since", "history", "keys", "last_trimmed", "name", "objects", "waiter",
                 "wake_scheduled")

    def __init__(self, name: str) -> None:
        self.name = name
        self.objects: dict[str, Stored] = {}
        self.keys: list[str] = []
        self.history: list[Change] = []
        self.complete_since = 0
        """Every change with rv > complete_since is in ``history`` (a watch may start there)."""
        self.last_trimmed = 0
        """rv of the newest change dropped from ``history`` (a watcher behind it lost events)."""
        self.waiter: asyncio.Future[None] | None = None
        self.wake_scheduled = False


def object_key(namespace: str, name: str) -> str:
    """The etcd-like key: ``ns/name`` sorts as the real server's ``/registry/...`` keys do."""
    return f"{namespace}/{name}" if namespace else name


class Store:
    """All buckets, the global resourceVersion, event TTLs and change notification."""

    def __init__(
        self,
        *,
        history: int = 10_000,
        event_ttl: float = 3600.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if history < 1:
            raise ValueError("history must be >= 1")
        self.history_size = history
        self.event_ttl = event_ttl
        self._monotonic = monotonic
        self._rv = 0
        self._buckets: dict[str, Bucket] = {}
        self._ttl_heap: list[tuple[float, str, int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.on_delete: list[Callable[[str, Stored], None]] = []
        self.on_write: list[Callable[[str, Stored], None]] = []

    # -- wiring -------------------------------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch notifications happen on ``loop``; writes from other threads hop onto it."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    @property
    def rv(self) -> int:
        """The current (newest) resourceVersion."""
        return self._rv

    def bucket(self, name: str) -> Bucket:
        b = self._buckets.get(name)
        if b is None:
            b = self._buckets[name] = Bucket(name)
        return b

    # -- reads --------------------------------------------------------------------------

    def get(self, bucket: str, key: str) -> Stored | None:
        b = self._buckets.get(bucket)
        return None if b is None else b.objects.get(key)

    def items(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[Stored]:
        """Current objects in key order, keys starting with ``prefix`` and > ``start_after``."""
        b = self.bucket(bucket)
        if start_after >= prefix:
            i = bisect.bisect_right(b.keys, start_after)
        else:
            i = bisect.bisect_left(b.keys, prefix)
        keys, objects = b.keys, b.objects
        while i < len(keys):
            k = keys[i]
            if prefix and not k.startswith(prefix):
                return
            yield objects[k]
            i += 1

    def count_after(self, bucket: str, prefix: str, key: str) -> int:
        """How many current keys with ``prefix`` sort after ``key``."""
        keys = self.bucket(bucket).keys
        start = bisect.bisect_right(keys, key)
        if not prefix:
            return len(keys) - start
        end = bisect.bisect_left(keys, prefix[:-1] + chr(ord(prefix[-1]) + 1))
        return max(0, end - start)

    def snapshot(
        self, bucket: str, at_rv: int, prefix: str = "", start_after: str = ""
    ) -> Iterator[Stored]:
        """Objects as they were at ``at_rv`` (a consistent continue page); TooOld past history."""
        b = self.bucket(bucket)
        if at_rv < b.complete_since:
            raise TooOld(at_rv, b.complete_since)
        i = bisect.bisect_right(b.history, at_rv, key=lambda c: c.rv)
        if i == len(b.history):
            yield from self.items(bucket, prefix, start_after)
            return
        override: dict[str, Stored | None] = {}
        for change in reversed(b.history[i:]):
            override[change.obj.key] = change.prev
        lo = max(prefix, start_after)
        extra = sorted(k for k in override if k > lo and k.startswith(prefix))
        current = (s.key for s in self.items(bucket, prefix, start_after))
        last = None
        for key in heapq.merge(current, extra):
            if key == last:
                continue
            last = key
            if key in override:
                old = override[key]
                if old is not None:
                    yield old
            else:
                yield b.objects[key]

    def changes_since(self, bucket: str, rv: int) -> list[Change]:
        """History entries newer than ``rv`` (caller checks staleness against the bucket)."""
        history = self.bucket(bucket).history
        i = bisect.bisect_right(history, rv, key=lambda c: c.rv)
        return history[i:]

    def check_watchable(self, bucket: str, rv: int) -> None:
        """Raise TooOld if a watch cannot start at ``rv`` (the watch cache's rule)."""
        b = self.bucket(bucket)
        if rv < b.complete_since:
            raise TooOld(rv, b.complete_since)

    # -- writes -------------------------------------------------------------------------

    def put(self, bucket: str, key: str, obj: dict[str, Any]) -> Stored:
        """Create or replace ``key``; stamps the next resourceVersion into ``obj``."""
        b = self.bucket(bucket)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        stored = Stored(key, obj, self._rv)
        prev = b.objects.get(key)
        if prev is None:
            bisect.insort(b.keys, key)
        b.objects[key] = stored
        self._record(b, Change("MODIFIED" if prev else "ADDED", stored, prev))
        if bucket == "events" and self.event_ttl > 0:
            heapq.heappush(self._ttl_heap, (self._monotonic() + self.event_ttl, key, self._rv))
        for hook in self.on_write:
            hook(bucket, stored)
        return stored

    def remove(self, bucket: str, key: str) -> Stored | None:
        """Delete ``key``; the DELETED event carries the deletion's resourceVersion."""
        b = self.bucket(bucket)
        prev = b.objects.pop(key, None)
        if prev is None:
            return None
        del b.keys[bisect.bisect_left(b.keys, key)]
        self._rv += 1
        obj = prev.copy()
        obj["metadata"]["resourceVersion"] = str(self._rv)
        gone = Stored(key, obj, self._rv)
        self._record(b, Change("DELETED", gone, prev))
        for hook in self.on_delete:
            hook(bucket, prev)
        return gone

    def _record(self, b: Bucket, change: Change) -> None:
        history = b.history
        history.append(change)
        excess = len(history) - self.history_size
        if excess > 0:
            b.last_trimmed = history[excess - 1].rv
            b.complete_since = b.last_trimmed
            del history[:excess]
        self._notify(b)

    def compact(self) -> int:
        """Drop all history: watches and continue tokens from older versions get 410."""
        for b in self._buckets.values():
            if b.history:
                b.last_trimmed = b.history[-1].rv
                b.history.clear()
            b.complete_since = self._rv
        return self._rv

    def expire_events(self) -> int:
        """Delete events whose TTL (counted from their last write) has passed."""
        now = self._monotonic()
        heap, removed = self._ttl_heap, 0
        while heap and heap[0][0] <= now:
            _, key, rv = heapq.heappop(heap)
            current = self.get("events", key)
            if current is not None and current.rv == rv:
                self.remove("events", key)
                removed += 1
        return removed

    # -- notification -------------------------------------------------------------------

    def _notify(self, b: Bucket) -> None:
        if b.waiter is None or b.wake_scheduled:
            return
        b.wake_scheduled = True
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._schedule_wake, b)
        else:
            self._schedule_wake(b)

    def _schedule_wake(self, b: Bucket) -> None:
        # Waking every watcher per write costs O(watchers) each time; a short delay lets a
        # burst of writes reach each watcher as one batch (one wake-up, one socket write).
        asyncio.get_running_loop().call_later(NOTIFY_DELAY, self._wake, b)

    @staticmethod
    def _wake(b: Bucket) -> None:
        waiter, b.waiter = b.waiter, None
        b.wake_scheduled = False
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, bucket: str, timeout: float) -> None:
        """Return when ``bucket`` changes or after ``timeout`` seconds, whichever is first."""
        b = self.bucket(bucket)
        if b.waiter is None:
            b.waiter = asyncio.get_running_loop().create_future()
        await asyncio.wait((b.waiter,), timeout=max(timeout, 0))

