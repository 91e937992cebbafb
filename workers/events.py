"""The events worker's job: Kubernetes events -> Datadog events -> intake, each occurrence once.

``run(ctx)`` is registered as ``workers.events:run``. Three threads, in a pipeline:

    feed (workers.eventwatch) .... list / watch / 410 / re-list; reads the stream
                                   --> bounded queue (up to 16 reads, undecoded) -->
    job (this module) ............ decode; drop DELETED, repeats and filtered events; read
                                   each into an Occurrence (the decoded dict goes at once)
                                   -> batch -> Datadog events (workers.bundles)
                                   --> one batch waiting -->
    sender (workers.eventsender) . encode, compress, POST, retry -> Progress(token)

While the intake is down the sender retries, the job blocks on it, the queue fills and the
feed stops reading, so the API server (1 h event TTL) holds the rest. The token only
advances to what the intake acknowledged (or to a bookmark / list position when nothing is
pending), so a killed worker resumes from there and repeats at most the batch in flight.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger

from workers.backoff import WATCH_BACKOFF, Backoff
from workers.bundles import MalformedEvent, Occurrence, datadog_events, is_collected, last_seen
from workers.eventsender import BatchSender, Outbound
from workers.eventwatch import EventFeed, FeedFailed, ListPage, WatchChunk
from workers.intake import IntakeClient, user_agent
from workers.kubeapi import KubeApi
from workers.protocol import Token
from workers.seen import SeenOccurrences

if TYPE_CHECKING:
    from workers.loop import WorkerContext

__all__ = ["EventJob", "run"]

QUEUE_READS = 16
"""Reads (each up to 64 KiB, ~50 events, undecoded) buffered ahead of the job: 1 MiB at most."""
_POLL_S = 0.2
"""Longest wait on the queue: how soon a stop is noticed when nothing arrives."""
_STATS_EVERY_S = 1.0
_FINAL_FLUSH_S = 1.0
"""On stop, how long the pending batch may wait for a retry (one attempt is always made)."""
_GC_THRESHOLD0 = 50_000
"""Young-generation threshold while the job runs. Decoded events are freed by reference
counting; with the default 700 the cyclic collector ran every few reads while a batch held
500 decoded events (the job ran ~30 % slower). Now that a batch holds only Occurrences the
difference is within noise (bench/bench_events.py, "default GC"); kept for list pages,
which hold 500 decoded events at once."""


def run(ctx: WorkerContext) -> None:
    """The events worker (``workers.events:run``): returns when ``ctx.stopping`` is set."""
    EventJob(ctx).run()


class EventJob:
    """One run of the events worker; ``api``, ``intake``, backoffs are for tests."""

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        api: KubeApi | None = None,
        intake: IntakeClient | None = None,
        watch_backoff: Backoff = WATCH_BACKOFF,
        seen: SeenOccurrences | None = None,
    ) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.settings = settings.events
        self.tags = settings.intake.tags
        self.hostname = settings.intake.hostname
        self.api = api or KubeApi.from_settings(settings.kube, user_agent=f"{user_agent()} events")
        self.intake = intake or IntakeClient(
            settings.intake,
            max_items=self.settings.batch_max_events,
            max_bytes=self.settings.batch_max_bytes,
        )
        self.seen = seen or SeenOccurrences()
        self.selectors = self.settings.collected_event_types
        self.queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_READS)
        self.feed_stop = threading.Event()
        token = ctx.token
        if token is not None and token.resource_version in ("", "0"):
            token = None  # "0" is how the Datadog Agent spells "no token"
        self.position: str | None = token.resource_version if token else None
        """resourceVersion of the last stream item taken (None: before the first list)."""
        self.listing = False
        self.rv_comparable = True
        self.list_since: Token | None = None
        """The position a re-list compares with (None: the start list, max_age applies)."""
        self.pending: list[Occurrence] = []
        self.pending_bytes = 0.0
        self.max_events = self.settings.batch_max_events
        self.max_bytes = self.settings.batch_max_bytes
        self.flush_at = 0.0
        self.stats: dict[str, float] = {}
        self.stats_at = 0.0
        self.problems = {"api": "", "intake": ""}
        self.health_lock = threading.Lock()
        self.malformed_quiet_until = 0.0
        self.malformed_quiet = 0
        self.sender = BatchSender(
            self.intake, token=token, progress=ctx.progress, count=self._count,
            on_intake_health=lambda problem: self._health("intake", problem),
        )  # fmt: skip
        self.feed = EventFeed(
            self.api, self.queue, settings=self.settings,
            resource_version=self.position, stop=self.feed_stop,
            count=self._count, on_api_health=lambda problem: self._health("api", problem),
            backoff=watch_backoff, list_everything=self.settings.max_age_s > 0,
        )  # fmt: skip

    # -- lifecycle -----------------------------------------------------------------------

    def run(self) -> None:
        old_threshold = gc.get_threshold()
        gc.freeze()  # what exists now lives as long as the job: never scan it again
        gc.set_threshold(max(old_threshold[0], _GC_THRESHOLD0), *old_threshold[1:])
        self.sender.start()
        thread = threading.Thread(target=self.feed.run, name="event-feed", daemon=True)
        thread.start()
        logger.info("collecting events from {} (fieldSelector {!r})",
                    f"resourceVersion {self.position}" if self.position else "now",
                    self.feed.selector or "")
        try:
            self._loop()
        finally:
            self.feed_stop.set()
            self.feed.interrupt()
            self._final_flush()
            thread.join(5.0)
            if thread.is_alive():
                logger.warning("event feed thread did not end within 5 s")
            self._push_stats()
            self.api.close()
            self.intake.close()
            gc.set_threshold(*old_threshold)

    def _loop(self) -> None:
        stopping = self.ctx.stopping
        get = self.queue.get
        while not stopping.is_set():
            wait = _POLL_S
            if self.pending:
                wait = min(wait, max(0.0, self.flush_at - time.monotonic()))
            try:
                item = get(timeout=wait)
            except queue.Empty:
                item = None
            if type(item) is WatchChunk:
                if not self._watched(item):
                    return
            elif type(item) is ListPage:
                if not self._listed(item):
                    return
            elif type(item) is FeedFailed:
                raise item.error
            now = time.monotonic()
            if self.pending and now >= self.flush_at and not self._flush():
                return
            if now >= self.stats_at:
                self._push_stats()

    # -- taking events ---------------------------------------------------------------------

    def _watched(self, chunk: WatchChunk) -> bool:
        """Decode and take a read's watch events; False if stopped while delivering."""
        lines = chunk.data.split(b"\n")
        lines.pop()  # after the last newline
        if b"\n\n" in chunk.data:
            lines = [line for line in lines if line]
        per_event = len(chunk.data) / max(1, len(lines))
        loads = orjson.loads
        bookmarks = deleted = garbled = 0
        for line in lines:
            try:
                event = loads(line)
                kind = event["type"]
                obj = event["object"]
            except (orjson.JSONDecodeError, TypeError, KeyError, IndexError):
                garbled += 1
                continue
            try:
                meta = obj["metadata"]
                rv = meta["resourceVersion"]
            except (TypeError, KeyError):
                rv = None
            if not rv:
                self._malformed(obj, "no metadata.resourceVersion")
                continue
            self.position = rv
            if kind == "BOOKMARK":
                bookmarks += 1
                if not self.pending:
                    self.sender.position(rv)
            elif kind == "DELETED":
                deleted += 1  # the TTL removed it: no occurrence
            elif self._take(obj, meta, per_event) and not self._flush():
                return False
        self._bump("events_received_total", len(lines) - bookmarks - garbled)
        if bookmarks:
            self._bump("bookmarks_total", bookmarks)
        if deleted:
            self._bump("events_deleted_ignored_total", deleted)
        if garbled:
            self._bump("watch_malformed_lines_total", garbled)
            self._malformed(None, f"{garbled} watch line(s) that are not watch events")
        return True

    def _take(self, obj: dict[str, Any], meta: dict[str, Any], size: float) -> bool:
        """Add one ADDED/MODIFIED event to the batch unless it is no new occurrence; True if
        the batch is full now.

        Only its ``Occurrence`` is kept: the decoded dict is freed while still in the CPU
        cache, and a batch holds ~0.9 KB an event instead of ~4.7 KB.
        """
        if self.selectors and not is_collected(obj, self.selectors):
            self._bump("events_filtered_total")
            return False
        try:
            occ = Occurrence(obj)
        except MalformedEvent as exc:
            self._malformed(None, str(exc))
            return False
        uid = meta.get("uid")
        if uid and not self.seen.take(uid, occ.count):
            self._bump("events_duplicates_total")
            return False
        pending = self.pending
        if not pending:
            self.flush_at = time.monotonic() + self.settings.flush_interval_s
        pending.append(occ)
        self.pending_bytes += size
        return len(pending) >= self.max_events or self.pending_bytes >= self.max_bytes

    def _listed(self, page: ListPage) -> bool:
        """Take the list items newer than the token (or within max_age at a start)."""
        if not self.listing:
            self.listing = True
            if not self._begin_list(page.resource_version):
                return False
        items = page.items
        self._bump("events_received_total", len(items))
        per_item = page.nbytes / len(items) if items else 0.0
        keep = self._newer if self.list_since is not None else self._recent
        for obj in items:
            if _rv(obj) is None:
                self._malformed(obj, "no metadata.resourceVersion")
            elif not keep(obj):
                self._bump("events_stale_total")
            elif self._take(obj, obj["metadata"], per_item) and not self._flush():
                return False
        if not page.last:
            return True
        self.listing = False
        self.position = page.resource_version
        logger.info("listed events up to resourceVersion {}", self.position)
        if not self.pending:
            self.sender.position(self.position)
        return True

    def _begin_list(self, list_rv: str) -> bool:
        if self.position is None:
            self.list_since = None  # a start: max_age decides
            return True
        self.list_since = Token(self.position, None)
        try:
            self.rv_comparable = int(list_rv) >= int(self.position)
        except ValueError:
            self.rv_comparable = False
        if not self.rv_comparable:
            logger.warning("list resourceVersion {} is behind the token's {}: comparing "
                           "event times instead", list_rv, self.position)
        if self.pending:  # what came before the 410, in stream order: ship it first
            return self._flush_positioned(self.position)
        return True

    def _newer(self, obj: dict[str, Any]) -> bool:
        """After a 410: is this listed event newer than where the stream was?

        resourceVersions say it best (etcd revisions increase cluster-wide, so a larger one
        was written after the token's position); when the list's resourceVersion is behind
        the token's (etcd restored from a backup, another cluster) they are not comparable
        and the last-seen time decides. Occurrences already taken are dropped later on.
        """
        since = self.list_since
        assert since is not None
        if self.rv_comparable:
            try:
                return int(obj["metadata"]["resourceVersion"]) > int(since.resource_version)
            except ValueError:
                pass
        return self._seen_after(obj, self.sender.newest)

    def _recent(self, obj: dict[str, Any]) -> bool:
        max_age = self.settings.max_age_s
        return max_age > 0 and self._seen_after(obj, time.time() - max_age - 1e-6)

    @staticmethod
    def _seen_after(obj: dict[str, Any], epoch: float) -> bool:
        try:
            return last_seen(obj) > epoch
        except MalformedEvent:
            return True  # _take reports it

    # -- delivering -------------------------------------------------------------------------

    def _flush(self, stop: threading.Event | None = None) -> bool:
        """Hand the pending batch to the sender; False if stopped while it was busy."""
        return self._flush_positioned(None if self.listing else self.position, stop)

    def _flush_positioned(self, position: str | None, stop: threading.Event | None = None
                          ) -> bool:
        occurrences, self.pending, self.pending_bytes = self.pending, [], 0.0
        events = datadog_events(occurrences, unbundle=self.settings.unbundle, tags=self.tags,
                                hostname=self.hostname)
        batch = Outbound(events, len(occurrences), position)
        del occurrences, events  # only the batch holds them now
        return self.sender.send(batch, stop or self.ctx.stopping, self._waiting)

    def _final_flush(self) -> None:
        """On return: the pending batch and the one in flight get a bounded last chance."""
        timer = threading.Timer(_FINAL_FLUSH_S, self.sender.give_up.set)
        timer.daemon = True
        timer.start()
        try:
            if self.pending:
                self._flush(self.sender.give_up)
            self.sender.close(_FINAL_FLUSH_S + 1.0)
        finally:
            timer.cancel()

    # -- health, stats, logs ------------------------------------------------------------------

    def _health(self, source: str, problem: str) -> None:
        with self.health_lock:
            self.problems[source] = problem
            problems = [p for p in self.problems.values() if p]
            self.ctx.set_health(not problems, "; ".join(problems))

    def _bump(self, key: str, n: float = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _count(self, key: str, n: float) -> None:
        """For the feed thread: straight to the context (rare events)."""
        self.ctx.count(key, n)

    def _waiting(self) -> None:
        if time.monotonic() >= self.stats_at:
            self._push_stats()

    def _push_stats(self) -> None:
        stats, self.stats = self.stats, {}
        for key, value in stats.items():
            self.ctx.count(key, value)
        if self.sender.failure is not None:
            raise self.sender.failure
        self.intake.report(self.ctx)  # running totals and the forbidden gauge
        self.ctx.gauge("events_dedup_uids", len(self.seen))
        self.seen.expire()
        self.stats_at = time.monotonic() + _STATS_EVERY_S

    def _malformed(self, obj: Any, problem: str) -> None:
        """Count and log (at most one line a minute, naming the event) a malformed event."""
        self._bump("events_malformed_total")
        now = time.monotonic()
        if now < self.malformed_quiet_until:
            self.malformed_quiet += 1
            return
        if obj is not None:
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            meta = meta if isinstance(meta, dict) else {}
            problem = f"malformed event {meta.get('namespace', '')}/{meta.get('name', '?')}: " \
                f"{problem}"
        more = f" ({self.malformed_quiet} more since the last report)" if self.malformed_quiet \
            else ""
        logger.warning("skipped {}{}", problem, more)
        self.malformed_quiet = 0
        self.malformed_quiet_until = now + 60.0


def _rv(obj: Any) -> str | None:
    try:
        return obj["metadata"]["resourceVersion"] or None
    except (TypeError, KeyError):
        return None
