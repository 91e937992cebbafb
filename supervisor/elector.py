"""Leader election, following client-go's ``tools/leaderelection``, plus fencing and a watch.

Rules kept from client-go:
- expiry is judged by *this* process's monotonic clock from when it last observed the record
  change, never by comparing the record's timestamps with the local clock;
- writes are compare-and-swap on resourceVersion; create-if-missing, and a 409 on create
  means somebody else made it first;
- ``leaderTransitions`` is incremented by whoever takes over and kept by renewals; a release
  writes an empty holder with a 1 s duration so the next candidate need not wait a lease.

Added here:
- **fencing**: a leader that has not renewed within ``renew_deadline`` of its last success
  calls ``on_stopped_leading`` (which stops the workers) *before* any follower can take over
  (followers wait a whole lease from their own observation of that last renewal);
- followers **watch** the lock object instead of polling it: a live leader's renewals arrive
  as watch events, so a follower costs one watch request every few minutes, and it learns of a
  release at once. If the watch cannot run (RBAC, errors) it falls back to client-go polling:
  one GET per retry period.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from loguru import logger

from supervisor.locks import LeaderRecord, ResourceLock, released
from workers.kubeapi import ApiError

__all__ = ["ElectionStatus", "ElectionTiming", "Elector"]


@dataclass(frozen=True, slots=True)
class ElectionTiming:
    """Lease timing; Datadog's choice: renew deadline = lease/2, retry period = lease/4."""

    lease_duration_s: float
    renew_deadline_s: float
    retry_period_s: float
    jitter: float = 0.1
    """Fraction of random spread on every wait, so replicas do not act in lock-step."""

    @classmethod
    def from_lease(cls, lease_duration_s: float) -> ElectionTiming:
        return cls(lease_duration_s, lease_duration_s / 2, lease_duration_s / 4)

    def jittered(self, period: float) -> float:
        return period * random.uniform(1 - self.jitter, 1 + self.jitter)

    @property
    def fencing_grace_s(self) -> float:
        """Workers get this long to stop after a failed renewal, then are killed: fencing
        starts at lease/2 after the last renewal, so they are gone by 3/4 of the lease."""
        return self.lease_duration_s / 4


@dataclass(frozen=True, slots=True)
class ElectionStatus:
    """A snapshot for /health and /metrics."""

    identity: str
    lock: str
    is_leader: bool
    holder: str
    lease_age_s: float | None
    """Seconds since this process last observed the record change (or renewed it)."""
    leader_transitions: int
    last_renew_latency_s: float | None
    last_contact_age_s: float | None
    """Seconds since the API server last answered the elector (any answer)."""
    watching: bool
    requests: dict[str, int]


class Elector:
    """Runs the election loop in the caller's thread (``run``) until ``stop`` is set."""

    def __init__(
        self,
        lock: ResourceLock,
        timing: ElectionTiming,
        *,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
        on_new_leader: Callable[[str], None] | None = None,
        watch: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = lock
        self.timing = timing
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._watch_enabled = watch
        self._clock = clock
        self._mutex = threading.Lock()
        self._changed = threading.Event()
        self._observed = LeaderRecord()
        self._observed_at: float | None = None
        self._observed_rv = 0
        """resourceVersion of the observed record: an older one (a late watch event) never
        overrides it, or a fresh leader could believe its own write was undone."""
        self._reported_leader = ""
        self._leading = False
        self._last_renew: float | None = None
        self._last_renew_latency: float | None = None
        self._last_contact: float | None = None
        self._watching = False
        self._attempt_failed = False
        self._term = 0
        self._term_cond = threading.Condition()
        """Guards the leadership term, ``_leading`` and ``_last_renew`` for the watchdog."""
        self._fence_done = threading.Event()
        self.ticked_at = clock()
        """When the election loop last woke up: a stuck loop fails liveness."""
        self.requests: Counter[str] = Counter()

    @property
    def identity(self) -> str:
        return self.lock.identity

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Campaign, lead, fence, repeat — until ``stop``. Does not release: see release()."""
        watcher: threading.Thread | None = None
        watcher_stop = threading.Event()
        while not stop.is_set():
            if self._watch_enabled and (watcher is None or not watcher.is_alive()):
                watcher_stop = threading.Event()
                watcher = threading.Thread(
                    target=self._watch_loop, args=(stop, watcher_stop), name="lock-watch",
                    daemon=True,
                )
                watcher.start()
            if not self._acquire(stop):
                break
            watcher_stop.set()  # a leader learns all it needs from its own writes
            term = self._begin_term()
            logger.info(
                "became leader of {} as {} (transitions={})",
                self.lock.describe(), self.identity, self._observed.leader_transitions,
            )
            self._report_leader()
            self._on_started()
            if self._renew_loop(stop, term):
                self._fence_done.wait()  # workers gone before we campaign again
        watcher_stop.set()

    # -- fencing ----------------------------------------------------------------------------
    def _begin_term(self) -> int:
        with self._term_cond:
            self._term += 1
            self._leading = True
            self._fence_done.clear()
            term = self._term
        threading.Thread(target=self._fencing_watchdog, args=(term,), name="fencing",
                         daemon=True).start()
        return term

    def _fencing_watchdog(self, term: int) -> None:
        """Fence at the renew deadline itself: a renewal stuck in a socket that never
        answers must not delay stopping the workers past it."""
        with self._term_cond:
            while self._term == term and self._leading:
                assert self._last_renew is not None
                left = self._last_renew + self.timing.renew_deadline_s - self._clock()
                if left <= 0:
                    break
                self._term_cond.wait(left)
            else:
                return
        self._fence(term, f"{self._not_renewed()} (a renewal still hangs)")

    def _not_renewed(self) -> str:
        return f"failed to renew {self.lock.describe()} within {self.timing.renew_deadline_s:.1f}s"

    def _fence(self, term: int, why: str) -> None:
        """Stop leading (once per term): the workers are stopped before this returns."""
        with self._term_cond:
            if self._term != term or not self._leading:
                return
            self._leading = False
            self._term_cond.notify_all()
        logger.error("{}: fencing (stopping workers)", why)
        try:
            self._on_stopped()
        finally:
            self._fence_done.set()

    def _acquire(self, stop: threading.Event) -> bool:
        while not stop.is_set():
            self.ticked_at = self._clock()
            if self._try_acquire_or_renew(self.timing.retry_period_s):
                return True
            self._report_leader()
            self._follower_wait(stop)
        return False

    def _renew_loop(self, stop: threading.Event, term: int) -> bool:
        """Renew every retry period; True if leadership was lost (fenced), False on stop."""
        while not stop.wait(self.timing.jittered(self.timing.retry_period_s)):
            self.ticked_at = self._clock()
            assert self._last_renew is not None
            deadline = self._last_renew + self.timing.renew_deadline_s
            while True:
                if not self._leading:
                    return True  # the watchdog fenced while we were waiting on the API
                remaining = deadline - self._clock()
                if remaining <= 0:
                    self._fence(term, self._not_renewed())
                    return True
                if self._try_acquire_or_renew(remaining):
                    if not self._leading:
                        return True  # renewed, but only after the deadline: stay fenced
                    break
                if not self.is_holder():
                    self._fence(term, f"lost {self.lock.describe()} to "
                                      f"{self._observed.holder_identity!r}")
                    return True
                left = deadline - self._clock()
                if stop.wait(min(self.timing.retry_period_s / 2, max(0.0, left))):
                    return False
        return False

    def _follower_wait(self, stop: threading.Event) -> None:
        """Wait until the observed lease may have expired or been released."""
        if self._attempt_failed:
            # The API refused or failed us: never retry faster than one retry period.
            stop.wait(self.timing.jittered(self.timing.retry_period_s))
            return
        while not stop.is_set():
            with self._mutex:
                record, observed_at = self._observed, self._observed_at
            now = self._clock()
            if observed_at is None:
                return
            if not record.holder_identity:
                # A release wakes every watching follower at once: spread their attempts.
                limit = min(0.5, self.timing.retry_period_s * self.timing.jitter)
                stop.wait(random.uniform(0, limit))
                return
            expires = observed_at + record.lease_duration_seconds
            if now >= expires:
                return
            if not self._watching:
                # client-go polling: one GET per (jittered) retry period.
                stop.wait(min(expires - now, self.timing.jittered(self.timing.retry_period_s)))
                return
            # Spread the wake-up a little so candidates do not all GET at the same instant.
            spread = random.uniform(0, self.timing.retry_period_s * self.timing.jitter)
            self._changed.clear()
            self._changed.wait(min(expires - now + spread, self.timing.lease_duration_s))
            self.ticked_at = self._clock()

    # -- one attempt (client-go tryAcquireOrRenew) ------------------------------------------
    def _try_acquire_or_renew(self, timeout: float) -> bool:
        """One attempt; all its requests together take at most ``timeout`` seconds."""
        until = self._clock() + max(0.05, min(timeout, self.lock.api.timeout_s))

        def left() -> float:
            return max(0.05, until - self._clock())

        now = datetime.now(UTC)
        desired = LeaderRecord(
            holder_identity=self.identity,
            lease_duration_seconds=max(1, round(self.timing.lease_duration_s)),
            acquire_time=now,
            renew_time=now,
        )
        sent = self._clock()
        # 1. Fast path: a valid leader writes over the object it last wrote, one request.
        if self.is_holder() and self._lease_valid(sent) and self.lock.resource_version:
            observed = self._observed
            record = replace(
                desired,
                acquire_time=observed.acquire_time,
                leader_transitions=observed.leader_transitions,
            )
            if self._call("update", self.lock.update, record, left()) is not _FAILED:
                self._renewed(record, sent)
                return True
            if self._clock() >= until:
                return False
        # 2. Read (or create) the record.
        current = self._call("get", self.lock.get, left())
        if current is _FAILED:
            return False
        if current is None:
            if self._call("create", self.lock.create, desired, left()) is _FAILED:
                return False
            self._renewed(desired, sent)
            return True
        assert isinstance(current, LeaderRecord)
        self._observe(current, self.lock.resource_version)
        # 3. Held by someone else and not expired by our own clock: nothing to do.
        held_by_other = current.holder_identity not in ("", self.identity)
        if held_by_other and self._lease_valid(self._clock()):
            return False
        # 4. Take over (or renew through the slow path).
        if current.holder_identity == self.identity:
            record = replace(
                desired,
                acquire_time=current.acquire_time,
                leader_transitions=current.leader_transitions,
            )
        else:
            record = replace(desired, leader_transitions=current.leader_transitions + 1)
        if self._call("update", self.lock.update, record, left()) is _FAILED:
            return False
        self._renewed(record, sent)
        return True

    def _call(self, verb: str, fn: Callable[..., object], *args: object) -> object:
        self.requests[verb] += 1
        self._attempt_failed = False
        try:
            result = fn(*args)
        except ApiError as exc:
            self._attempt_failed = exc.code != 409
            if exc.code:
                self._last_contact = self._clock()
            if exc.code == 409:
                logger.debug("{} {}: conflict (someone else wrote)", verb, self.lock.describe())
            else:
                logger.warning("{} {} failed: {}", verb, self.lock.describe(), exc)
            return _FAILED
        self._last_contact = self._clock()
        return result

    def _renewed(self, record: LeaderRecord, sent: float) -> None:
        with self._mutex:
            self._observed = record
            self._observed_at = sent
            self._observed_rv = max(self._observed_rv, _rv(self.lock.resource_version))
        self._last_renew_latency = self._clock() - sent
        with self._term_cond:
            self._last_renew = sent
            self._term_cond.notify_all()

    def _observe(self, record: LeaderRecord, resource_version: str) -> None:
        with self._mutex:
            rv = _rv(resource_version)
            if rv and rv <= self._observed_rv:
                return  # older than what we already know (e.g. our own newer write)
            self._observed_rv = max(self._observed_rv, rv)
            if record != self._observed:
                self._observed = record
                self._observed_at = self._clock()
                self._changed.set()
            elif self._observed_at is None:
                self._observed_at = self._clock()

    def _lease_valid(self, now: float) -> bool:
        with self._mutex:
            if self._observed_at is None:
                return False
            return self._observed_at + self._observed.lease_duration_seconds > now

    def _report_leader(self) -> None:
        holder = self._observed.holder_identity
        if holder != self._reported_leader:
            self._reported_leader = holder
            if holder and holder != self.identity:
                logger.info("leader is now {!r}", holder)
            if self._on_new_leader is not None:
                self._on_new_leader(holder)

    # -- the follower's watch ---------------------------------------------------------------
    def _watch_loop(self, stop: threading.Event, watcher_stop: threading.Event) -> None:
        failures = 0
        resource_version = ""
        while not (stop.is_set() or watcher_stop.is_set()):
            self.requests["watch"] += 1
            try:
                for kind, record, rv in self.lock.watch(
                    resource_version,
                    timeout_s=random.randint(300, 600),
                    read_timeout=max(60.0, 2 * self.timing.lease_duration_s),
                ):
                    self._watching = True
                    self._last_contact = self._clock()
                    failures = 0
                    resource_version = rv or resource_version
                    if record is not None:
                        self._observe(record, rv)
                    elif kind == "DELETED":
                        self._observe(LeaderRecord(), rv)
                    if stop.is_set() or watcher_stop.is_set():
                        break
            except ApiError as exc:
                self._watching = False
                resource_version = ""  # 410 or any error: restart from the current state
                failures += 1
                if exc.code in (401, 403):
                    logger.warning(
                        "cannot watch {} ({}); polling every {:.1f}s instead",
                        self.lock.describe(), exc, self.timing.retry_period_s,
                    )
                    return
                logger.debug("watch on {} failed: {}", self.lock.describe(), exc)
            except Exception as exc:  # a broken stream must never kill the election
                self._watching = False
                resource_version = ""
                failures += 1
                logger.debug("watch on {} broke: {!r}", self.lock.describe(), exc)
            self._changed.set()  # let the follower re-evaluate (and poll while we retry)
            delay = min(30.0, self.timing.retry_period_s * (2 ** min(failures, 5)))
            if failures and (stop.wait(delay) or watcher_stop.is_set()):
                break
        self._watching = False

    # -- for the rest of the supervisor -------------------------------------------------------
    def is_holder(self) -> bool:
        """The last observed record names us (client-go's IsLeader)."""
        return self._observed.holder_identity == self.identity

    def is_leader(self) -> bool:
        """Leading and renewed within the renew deadline: safe to act on the leader's behalf
        (e.g. write the token). False as soon as fencing could be under way."""
        last = self._last_renew
        return (
            self._leading
            and self.is_holder()
            and last is not None
            and self._clock() - last < self.timing.renew_deadline_s
        )

    def release(self) -> bool:
        """Hand the lock over at once (empty holder, 1 s). Call after the workers stopped."""
        with self._term_cond:
            self._leading = False  # ends the term; the fencing watchdog goes away
            self._term_cond.notify_all()
        # The workers are stopped already: an election thread that outlived its join (stuck
        # in an API call) and now sees the term over must not wait for a fence for ever.
        self._fence_done.set()
        if not self.is_holder():
            return True
        timeout = self.timing.renew_deadline_s
        current = self._call("get", self.lock.get, timeout)
        if current is _FAILED or current is None:
            return False
        assert isinstance(current, LeaderRecord)
        if current.holder_identity != self.identity:
            return True
        record = released(current, datetime.now(UTC))
        if self._call("update", self.lock.update, record, timeout) is _FAILED:
            return False
        with self._mutex:
            self._observed = record
            self._observed_at = self._clock()
            self._observed_rv = max(self._observed_rv, _rv(self.lock.resource_version))
        logger.info("released {}", self.lock.describe())
        return True

    def status(self) -> ElectionStatus:
        now = self._clock()
        with self._mutex:
            record, observed_at = self._observed, self._observed_at
        return ElectionStatus(
            identity=self.identity,
            lock=self.lock.describe(),
            is_leader=self.is_leader(),
            holder=record.holder_identity,
            lease_age_s=None if observed_at is None else now - observed_at,
            leader_transitions=record.leader_transitions,
            last_renew_latency_s=self._last_renew_latency,
            last_contact_age_s=None if self._last_contact is None else now - self._last_contact,
            watching=self._watching,
            requests=dict(self.requests),
        )


_FAILED = object()


def _rv(resource_version: str) -> int:
    """resourceVersions as integers (etcd's); 0 for anything else, which never compares."""
    try:
        return int(resource_version)
    except (TypeError, ValueError):
        return 0
