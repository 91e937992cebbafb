"""Delivering the events worker's batches, in order, on a thread of their own; the token.

The job transforms batch N+1 while this thread encodes, compresses and POSTs batch N (zlib
and the socket release the GIL), so the intake's round trip costs no reading time. One
batch waits at most besides the one in flight: ``send`` blocks beyond that, which is the
backpressure that finally stops the watch. This thread is the only one that reports
progress, so tokens go out in order: after a 2xx (or a skip) for a batch, and for a
bookmark or list position only while no batch is queued or in flight.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from loguru import logger

from workers.intake import IntakeClient, Outcome
from workers.protocol import Token

__all__ = ["BatchSender", "Outbound"]

_PUT_POLL_S = 0.2
_TIMESTAMP = itemgetter("timestamp")


@dataclass(frozen=True, slots=True)
class Outbound:
    """One batch on its way: Datadog events and where the token goes once delivered."""

    events: list[dict[str, Any]]
    kube_events: int
    """Kubernetes events it stands for (counted as delivered on success)."""
    resource_version: str | None
    """Token position after this batch (None: inside a list, nothing to report)."""


class BatchSender:
    """Delivers ``Outbound`` batches one at a time, for ever, until ``close``."""

    def __init__(
        self,
        intake: IntakeClient,
        *,
        token: Token | None,
        progress: Callable[[Token], None],
        count: Callable[[str, float], None],
        on_intake_health: Callable[[str], None],
    ) -> None:
        self.intake = intake
        self.token = token
        """The last token reported (or handed over at start)."""
        self.newest = token.timestamp.timestamp() if token and token.timestamp else 0.0
        """Epoch seconds of the newest event delivered: the token's timestamp."""
        self._progress = progress
        self._count = count
        self._on_intake_health = on_intake_health
        self._queue: queue.Queue[Outbound | None] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._busy = 0
        """Batches queued or in flight."""
        self._problem = ""
        self.give_up = threading.Event()
        """Set: stop retrying (the batch in flight is abandoned; the next run repeats it)."""
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- the job's side -------------------------------------------------------------------

    def send(
        self, batch: Outbound, stop: threading.Event, on_wait: Callable[[], None] | None = None
    ) -> bool:
        """Queue ``batch``; blocks while another one waits (calling ``on_wait`` about five
        times a second). False if ``stop`` came first."""
        with self._lock:
            self._busy += 1
        while True:
            if self.failure is not None:
                raise self.failure
            try:
                self._queue.put(batch, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                if stop.is_set():
                    with self._lock:
                        self._busy -= 1
                    return False
                if on_wait is not None:
                    on_wait()

    def position(self, resource_version: str) -> bool:
        """Report a bookmark / list position if nothing is queued or in flight (True)."""
        with self._lock:
            if self._busy:
                return False
            self._report(resource_version)
            return True

    def close(self, timeout: float) -> None:
        """Deliver what is queued (retrying until ``give_up``), then end the thread."""
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=_PUT_POLL_S)
                break
            except queue.Full:
                if self.give_up.is_set():
                    break
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("event sender did not end within {:.1f} s", timeout)

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._queue.get()) is not None:
                delivered = self._deliver(batch)
                with self._lock:
                    self._busy -= 1
                    if delivered and batch.resource_version is not None:
                        self._report(batch.resource_version)
                if not delivered:
                    logger.info("stopped with {} event(s) undelivered; the next run repeats "
                                "them", batch.kube_events)
                    return
        except BaseException as exc:  # a bug: the job re-raises it
            logger.opt(exception=exc).error("event sender failed: {}", exc)
            self.failure = exc

    def _deliver(self, batch: Outbound) -> bool:
        """POST until the intake is done with the batch; False if given up."""
        events = batch.events
        while events:
            delivery = self.intake.deliver_events(events, self.give_up)
            if delivery.outcome is Outcome.STOPPED:
                return False
            if delivery.outcome is Outcome.FORBIDDEN:
                self._intake_health(f"intake refused the API key: {delivery.detail}")
                continue  # the client pauses before the next try; the token stays
            self._intake_health("")
            self._count("datadog_events_acknowledged_total", delivery.acknowledged)
            if delivery.skipped:
                self._count("datadog_events_skipped_total", delivery.skipped)
            newest = max(map(_TIMESTAMP, events))
            if newest > self.newest:
                self.newest = float(newest)
            break
        self._count("events_delivered_total", batch.kube_events)
        self._count("batches_total", 1)
        return True

    def _intake_health(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            self._on_intake_health(problem)

    def _report(self, resource_version: str) -> None:
        """Send Progress (caller holds the lock)."""
        stamp = datetime.fromtimestamp(self.newest, UTC) if self.newest else None
        token = Token(resource_version, stamp)
        if token != self.token:
            self.token = token
            self._progress(token)
