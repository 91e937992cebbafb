"""Following cluster-wide core/v1 Events: list, watch, 410 Gone, re-list, reconnect.

Three levels, as kopf draws a watch: ``EventFeed.run`` reconnects for ever with backoff
(infinite) -> ``_follow`` keeps the resourceVersion across streams and re-lists after a
410 (continuous) -> ``_stream`` reads one watch response (one stream). It runs in a thread
of its own and hands its results, in stream order, to a bounded queue:

    WatchChunk ... the complete watch event lines of one network read (ADDED, MODIFIED,
                   DELETED, BOOKMARK), undecoded: the job splits and decodes them right
                   where it uses them
    ListPage ..... one page of a paginated list; the last one carries the list's
                   resourceVersion, where the watch then starts
    FeedFailed ... the thread died of a bug (the job re-raises it)

A full queue blocks the thread, which stops reading the socket: the API server holds the
events meanwhile (backpressure). ``interrupt()`` shuts the socket of the request in flight
so that a blocked read returns at once when the job is told to stop.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import urllib3
from loguru import logger

from workers.backoff import WATCH_BACKOFF, Attempts, Backoff
from workers.kubeapi import ApiError, KubeApi
from workers.settings import EventSettings

__all__ = [
    "EVENTS_PATH",
    "LIST_PAGE_SIZE",
    "EventFeed",
    "FeedFailed",
    "ListPage",
    "WatchChunk",
    "field_selector",
]

EVENTS_PATH = "/api/v1/events"
LIST_PAGE_SIZE = 500
"""Items per list page: a 50,000-event list in one response costs hundreds of MB."""
READ_SIZE = 65536
"""Bytes per socket read: 64 KiB reads decode about 1.5x faster than 8 KiB ones."""
_PUT_POLL_S = 0.2
_QUICK_END_S = 1.0
"""A stream that ends sooner than this without a single line counts as a failure."""
_EXPIRED_REASONS = frozenset({"Expired", "Gone"})


@dataclass(frozen=True, slots=True)
class WatchChunk:
    """The watch event lines (``{"type", "object"}`` JSON, each ending in a newline) of one
    read, in stream order, as they came. The read-ahead costs its JSON size (~1.2 KB an
    event, not a decoded dict's ~5 KB); the job splits and decodes it where it uses it."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ListPage:
    """Event objects of one list page (in key order, not time order)."""

    items: list[dict[str, Any]]
    nbytes: int
    resource_version: str
    """The list's resourceVersion (the same on every page: one consistent snapshot)."""
    last: bool
    """The last page: the watch resumes from ``resource_version``."""


@dataclass(frozen=True, slots=True)
class FeedFailed:
    """The feed thread died of an unexpected exception: a bug, fatal for the job."""

    error: BaseException = field(repr=False)


class _Expired(Exception):
    """The watch position left the server's history (410): re-list."""


class _Stopped(Exception):
    """The job asked the feed to stop."""


def field_selector(settings: EventSettings) -> str | None:
    """``filtered_event_types`` as one server-side fieldSelector (terms joined by commas)."""
    terms = [t.strip() for t in settings.filtered_event_types if t and t.strip()]
    return ",".join(terms) or None


def _is_expired(status: Mapping[str, Any]) -> bool:
    return status.get("code") == 410 or status.get("reason") in _EXPIRED_REASONS


class EventFeed:
    """Reads cluster-wide Events from ``resource_version`` on, for ever, into ``out``.

    ``resource_version`` None: start with a list (the job decides what of it to keep) and
    watch from the list's resourceVersion. ``run`` never raises for API or network
    trouble: it backs off (``backoff``) and tries again until ``stop`` is set.
    """

    def __init__(
        self,
        api: KubeApi,
        out: queue.Queue[object],
        *,
        settings: EventSettings,
        resource_version: str | None,
        stop: threading.Event,
        count: Callable[[str, float], None],
        on_api_health: Callable[[str], None],
        backoff: Backoff = WATCH_BACKOFF,
        list_everything: bool = True,
    ) -> None:
        """``count(key, n)`` adds to a counter; ``on_api_health(problem)`` is called with
        "" once the API answers again, else with a one-line description of the trouble.
        ``list_everything`` False: a start without resourceVersion lists one item only (the
        list's resourceVersion is all the job needs when it replays nothing)."""
        self.api = api
        self.out = out
        self.settings = settings
        self.resource_version = resource_version
        self.stop = stop
        self.count = count
        self.on_api_health = on_api_health
        self.backoff = backoff
        self.list_everything = list_everything
        self.selector = field_selector(settings)
        self._response: urllib3.BaseHTTPResponse | None = None
        self._lock = threading.Lock()
        self._problem = ""
        self._got_lines = False

    # -- control (any thread) ------------------------------------------------------------

    def interrupt(self) -> None:
        """Make a blocked read return now (call after setting ``stop``)."""
        with self._lock:
            response = self._response
        if response is None:
            return
        # Already released or closed: then nothing blocks on it.
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            response.shutdown()

    # -- level 1: for ever ---------------------------------------------------------------

    def run(self) -> None:
        """Thread body: follow the Events until ``stop``; a bug is handed over as FeedFailed."""
        try:
            self._follow()
        except _Stopped:
            pass
        except BaseException as exc:
            logger.opt(exception=exc).error("event feed failed: {}", exc)
            self._put_final(FeedFailed(exc))

    def _follow(self) -> None:
        attempts = Attempts(self.backoff)
        relist = False
        while not self.stop.is_set():
            self._got_lines = False
            started = time.monotonic()
            try:
                if self.resource_version is None or relist:
                    self._list(relist=relist)
                    relist = False
                self._stream()
                if self._got_lines or time.monotonic() - started >= _QUICK_END_S:
                    attempts.reset()
                    self.count("watch_restarts_total", 1)
                    continue  # the server's timeoutSeconds ended it: re-open at once
                problem = "watch ended at once without a line"
            except (_Expired, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.code != 410:
                    problem = str(exc)
                    self._unhealthy(exc)
                else:
                    self._expired(str(exc))
                    if not relist:
                        relist = True
                        continue  # re-list at once, the first time
                    problem = f"410 again right after a re-list: {exc}"
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"[:300]
            if self.stop.is_set():
                break
            if self._got_lines:
                attempts.reset()  # it worked for a while: the first retry comes soon
            delay = attempts.next_delay()
            self.count("watch_errors_total", 1)
            logger.warning("event watch interrupted ({}); reconnecting in {:.2f} s",
                           problem, delay)
            if self.stop.wait(delay):
                break

    def _expired(self, why: str) -> None:
        logger.info("watch position {} expired ({}); re-listing", self.resource_version, why)
        self.count("watch_expired_total", 1)

    def _healthy(self) -> None:
        if self._problem:
            self._problem = ""
            self.on_api_health("")

    def _unhealthy(self, exc: ApiError) -> None:
        problem = f"Kubernetes API: {exc}"[:300]
        if problem != self._problem:
            self._problem = problem
            self.on_api_health(problem)

    # -- level 2: list -----------------------------------------------------------------------

    def _list(self, *, relist: bool) -> None:
        """Page through the Events (restarting after an expired continue token)."""
        if relist:
            self.count("relists_total", 1)
        limit = LIST_PAGE_SIZE if relist or self.list_everything else 1
        token: str | None = None
        while True:
            query = {"limit": limit, "fieldSelector": self.selector, "continue": token}
            try:
                body, nbytes = self._get(EVENTS_PATH, query)
            except ApiError as exc:
                if exc.code != 410 or token is None:
                    raise
                # The snapshot behind the continue token was compacted: start over. The
                # pages already handed over come again; the job's memory drops repeats.
                logger.info("list continue token expired; restarting the list")
                self.count("list_restarts_total", 1)
                token = None
                continue
            meta = body.get("metadata") or {}
            items = body.get("items") or []
            rv = str(meta.get("resourceVersion") or "")
            if not rv:
                raise ApiError(0, "BadList", "list answer without metadata.resourceVersion")
            token = (meta.get("continue") or None) if limit > 1 else None
            self._put(ListPage(items, nbytes, rv, last=token is None))
            if token is None:
                self.resource_version = rv
                return

    def _get(self, path: str, query: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        """One GET, decoded, and its size (interruptible: the response is registered)."""
        response = self._open(path, query, self.api.timeout_s)
        complete = False
        try:
            data = response.read()
            complete = True
        finally:
            self._release(response, complete=complete)
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ApiError(0, "BadList", f"list answer is not JSON: {data[:80]!r}") from None
        if not isinstance(body, dict):
            raise ApiError(0, "BadList", "list answer is not an object")
        return body, len(data)

    def _open(
        self, path: str, query: Mapping[str, Any], timeout: float | urllib3.Timeout
    ) -> urllib3.BaseHTTPResponse:
        if self.stop.is_set():
            raise _Stopped
        response = self.api.open("GET", path, query=query, timeout=timeout)
        self._healthy()  # the API answered 2xx
        with self._lock:
            self._response = response
        if self.stop.is_set():  # interrupt() may have run just before we registered
            self._release(response, complete=False)
            raise _Stopped
        return response

    def _release(self, response: urllib3.BaseHTTPResponse, *, complete: bool) -> None:
        with self._lock:
            self._response = None
        if complete and not self.stop.is_set():
            response.release_conn()  # read to the end: the connection is reusable
        else:
            response.close()

    # -- level 3: one watch stream ---------------------------------------------------------

    def _stream(self) -> None:
        """Read one watch stream to its end (``_got_lines`` says if it carried any)."""
        settings = self.settings
        query = {
            "watch": True,
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": settings.watch_timeout_s,
            "fieldSelector": self.selector,
        }
        timeout = urllib3.Timeout(connect=self.api.timeout_s, read=settings.inactivity_timeout_s)
        response = self._open(EVENTS_PATH, query, timeout)
        complete = False
        try:
            for data in _complete_lines(response):
                self._got_lines = True
                if b'"ERROR"' in data:  # one substring search a read; the exact check after
                    data = self._before_error(data)
                self._position(data)
                self._put(WatchChunk(data))
            complete = True
        finally:
            self._release(response, complete=complete)
        if self.stop.is_set():
            raise _Stopped

    def _position(self, data: bytes) -> None:
        """The resourceVersion of the last line is where a new stream resumes."""
        end = len(data)
        while end > 0:
            start = data.rfind(b"\n", 0, end - 1) + 1
            try:
                rv = orjson.loads(data[start:end])["object"]["metadata"]["resourceVersion"]
            except (orjson.JSONDecodeError, TypeError, KeyError, IndexError):
                rv = None  # a garbled line: the job counts it
            if rv:
                self.resource_version = rv
                return
            end = start

    def _before_error(self, data: bytes) -> bytes:
        """Lines up to an ERROR event; the ERROR itself ends the stream (raised)."""
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            if b'"ERROR"' not in line:
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict) or event.get("type") != "ERROR":
                continue  # "ERROR" in a message, say
            if i:
                before = b"\n".join(lines[:i]) + b"\n"
                self._position(before)
                self._put(WatchChunk(before))
            status = event.get("object")
            status = status if isinstance(status, dict) else {}
            if _is_expired(status):
                raise _Expired(str(status.get("message") or status.get("reason") or "410"))
            raise ApiError(int(status.get("code") or 0), str(status.get("reason") or "Error"),
                           str(status.get("message") or "watch ERROR event"), status)
        return data

    # -- hand-over ----------------------------------------------------------------------------

    def _put(self, item: object) -> None:
        """Queue ``item``; blocks while the job is behind (backpressure) unless stopping."""
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                self.out.put(item, timeout=_PUT_POLL_S)
                return
            except queue.Full:
                continue

    def _put_final(self, item: object) -> None:
        """``_put`` for the thread's last word: a stop simply drops it."""
        with contextlib.suppress(_Stopped):
            self._put(item)


def _complete_lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The complete lines of each read, as one bytes object ending in a newline.

    Not ``kubeapi.watch_lines``: a whole read goes to the job in one queue operation, and
    it goes as soon as the read returns (a quiet stream never holds lines back).
    """
    pending = b""
    for data in response.stream(READ_SIZE, decode_content=True):
        end = data.rfind(b"\n") + 1
        if not end:
            pending += data
            continue
        complete = pending + data[:end] if pending else data[:end]
        pending = data[end:]
        if complete.strip():
            yield complete
    if pending.strip():
        yield pending + b"\n"
