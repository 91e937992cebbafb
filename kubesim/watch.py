"""Watch streams: chunked JSON lines, one event per line, like the real watch cache.

A watch starts from a resourceVersion (only newer changes), or from ""/"0" (synthetic
ADDED for every current object first). Selectors turn a change into ADDED / MODIFIED /
DELETED as an object enters or leaves the selection (cacheWatcher.convertToWatchEvent).
A start older than the retained history yields one ERROR event carrying a 410 Expired
Status, on a 200 response — exactly what kube-apiserver does. Every watcher reuses the
change's pre-serialised line; nothing is re-encoded per watcher.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from kubesim import errors
from kubesim.bodies import render
from kubesim.cluster import USER_KEY, Cluster, WatchHandle
from kubesim.listing import make_matcher, parse_rv
from kubesim.requestinfo import RequestInfo
from kubesim.resources import Resource
from kubesim.store import Change, Stored, TooOld, object_key
from kubesim.tables import table, wants_table

__all__ = ["serve_watch"]

_CHUNK_LINES = 2000
_INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def _line(type_: str, raw: bytes) -> bytes:
    return b'{"type":"%s","object":%s}\n' % (type_.encode(), raw)


def _bookmark(resource: Resource, rv: int, initial_end: bool = False) -> bytes:
    meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
    if initial_end:
        meta["annotations"] = {_INITIAL_EVENTS_END: "true"}
    obj = {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": meta}
    return _line("BOOKMARK", orjson.dumps(obj))


class _Filter:
    """Turns history changes into this watcher's lines."""

    def __init__(self, prefix: str, name_key: str,
                 matcher: Callable[[Stored], bool] | None,
                 render_obj: Callable[[Stored], bytes] | None) -> None:
        self.prefix = prefix
        self.name_key = name_key
        self.matcher = matcher
        self.render = render_obj
        self.plain = matcher is None and render_obj is None and not name_key

    def _selected(self, stored: Stored) -> bool:
        if self.name_key and stored.key != self.name_key:
            return False
        return self.matcher is None or self.matcher(stored)

    def line(self, change: Change) -> bytes | None:
        if self.prefix and not change.obj.key.startswith(self.prefix):
            return None
        if self.plain:
            return change.line()
        cur = change.type != "DELETED" and self._selected(change.obj)
        old = change.prev is not None and self._selected(change.prev)
        if cur:
            type_ = "ADDED" if not old else change.type
            return _line(type_, self._raw(change.obj))
        if not old:
            return None
        if change.type == "DELETED":
            return _line("DELETED", self._raw(change.obj))
        # Left the selection: DELETED with the previous content at this change's version.
        assert change.prev is not None
        obj = change.prev.copy()
        obj["metadata"]["resourceVersion"] = str(change.rv)
        return _line("DELETED", self._raw(Stored(change.prev.key, obj, change.rv)))

    def _raw(self, stored: Stored) -> bytes:
        return stored.raw if self.render is None else self.render(stored)

    def initial(self, stored: Stored) -> bytes | None:
        return _line("ADDED", self._raw(stored)) if self._selected(stored) else None


def _renderer(request: web.Request, resource: Resource) -> Callable[[Stored], bytes] | None:
    if wants_table(request.headers.get("Accept", "")):
        include = request.query.get("includeObject", "Metadata")

        def as_table(stored: Stored) -> bytes:
            meta = {"resourceVersion": str(stored.rv)}
            return orjson.dumps(table(resource, [stored.obj], meta, include))

        return as_table
    if resource.group == "events.k8s.io":
        return lambda stored: render(resource, stored)
    return None


async def _write(resp: web.StreamResponse, lines: list[bytes]) -> None:
    for i in range(0, len(lines), _CHUNK_LINES):
        await resp.write(b"".join(lines[i:i + _CHUNK_LINES]))


async def serve_watch(
    request: web.Request, cluster: Cluster, resource: Resource, info: RequestInfo, namespace: str
) -> web.StreamResponse:
    store, query, config = cluster.store, request.query, cluster.config
    prefix = f"{namespace}/" if resource.namespaced and namespace else ""
    name_key = object_key(namespace, info.name) if info.name and not query.get(
        "fieldSelector") else ""
    filt = _Filter(prefix, name_key, make_matcher(resource, query),
                   _renderer(request, resource))
    bookmarks = query.get("allowWatchBookmarks", "") in ("true", "1")
    send_initial = query.get("sendInitialEvents", "") == "true"
    try:
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else (
            config.min_request_timeout * (1 + random.random()))
    except ValueError:
        raise errors.bad_request(f'timeoutSeconds: Invalid value: "{query["timeoutSeconds"]}"'
                                 ) from None
    rv_text = query.get("resourceVersion", "")
    initial: list[bytes] = []
    error: bytes | None = None
    if rv_text in ("", "0") or send_initial:
        cursor = store.rv
        for stored in store.items(resource.bucket, prefix):
            line = filt.initial(stored)
            if line is not None:
                initial.append(line)
    else:
        cursor = parse_rv(rv_text)
        try:
            store.check_watchable(resource.bucket, cursor)
        except TooOld as exc:
            error = _line("ERROR", errors.expired(str(exc)).body())

    resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                       "Cache-Control": "no-cache, private"})
    resp.enable_chunked_encoding()
    transport = request.transport
    user = request.get(USER_KEY)
    handle = WatchHandle(info, user.name if user is not None else "",
                         lambda: transport.abort() if transport else None)
    cluster.watches.add(handle)
    try:
        await resp.prepare(request)
        if error is not None:
            await resp.write(error)
        else:
            await _write(resp, initial)
            if send_initial and bookmarks:
                await resp.write(_bookmark(resource, cursor, initial_end=True))
            await _follow(resp, cluster, resource, filt, handle, cursor, timeout, bookmarks)
        if not handle.dropped:
            await resp.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client went away (or was cut); nothing to answer
    finally:
        cluster.watches.discard(handle)
    return resp


async def _follow(resp: web.StreamResponse, cluster: Cluster, resource: Resource, filt: _Filter,
                  handle: WatchHandle, cursor: int, timeout: float, bookmarks: bool) -> None:
    """Stream changes after ``cursor`` until the deadline, a drop, or falling behind."""
    store, config = cluster.store, cluster.config
    now = time.monotonic()
    deadline = now + timeout
    next_bookmark = now + config.bookmark_interval
    droppers = cluster.faults.watch_droppers(handle.info, handle.user)
    if droppers and cluster.faults.sample() < max(f.spec.rate for f in droppers):
        handle.drop_at = now + min(f.spec.drop_after for f in droppers)
    while True:
        now = time.monotonic()
        if handle.drop_at is not None and now >= handle.drop_at:
            handle.abort()
            return
        if now >= deadline:
            return
        if cursor < store.bucket(resource.bucket).last_trimmed:
            return  # fell behind the history window: end; the client re-lists (410 then)
        changes = store.changes_since(resource.bucket, cursor)
        if changes:
            lines = [line for c in changes if (line := filt.line(c)) is not None]
            cursor = changes[-1].rv
            await _write(resp, lines)
            continue
        cursor = max(cursor, store.rv)
        if bookmarks and now >= next_bookmark:
            await resp.write(_bookmark(resource, cursor))
            next_bookmark = now + config.bookmark_interval
        wake = min(deadline, next_bookmark) if bookmarks else deadline
        if handle.drop_at is not None:
            wake = min(wake, handle.drop_at)
        await store.wait(resource.bucket, wake - now)
