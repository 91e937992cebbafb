"""The demo's story once everything runs, phase by phase.

electing -> waiting for the event worker (uncounted warm-up events until one arrives: with
the seed token "0" the worker starts from "now") -> streaming (after 40 % the leader gets
SIGTERM, or SIGKILL with ``--crash``; once another replica holds the lock, the old one is
restarted and rejoins as a follower) -> draining (until every marker arrived, or a
deadline) -> summary -> with ``--keep``, streaming on until Ctrl-C.

All on the main thread (replicas must be started from it, see ``Replica.start``), in ticks
of a quarter second: each tick refreshes the view, turns what the monitor saw into timeline
notes and advances the hand-over.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from demo.control import EXIT_FAILED, EXIT_OK, Options, Stopper
from demo.generator import EventGenerator
from demo.intake import DemoIntake
from demo.observe import LOCK_NAME, Monitor, Observed, replica_of
from demo.replicas import Replica
from demo.summary import HandOver, Timings, render, tally, verdict
from demo.view import Frame, View
from kubesim.runner import KubeSim

__all__ = ["Run"]

LOCK = f"endpoints/{LOCK_NAME}"
_TICK_S = 0.25
_ELECT_TIMEOUT_S = 30.0
_WARMUP_TIMEOUT_S = 45.0
_SETTLE_S = 1.5
"""After the last marker arrived: one flush interval and a margin, for late duplicates."""


@dataclass
class _HandOverState:
    signal: str
    old: Replica
    old_identity: str
    at: float
    new: Replica | None = None
    lock_s: float | None = None
    first_event_s: float | None = None
    restarted: bool = False


class _Failed(Exception):
    """The story cannot go on; ``str()`` is the reason for the summary."""


@dataclass
class Run:
    options: Options
    sim: KubeSim
    intake: DemoIntake
    replicas: list[Replica]
    monitor: Monitor
    view: View
    stopper: Stopper
    started: float
    log_dir: Path
    summarised: bool = False
    phase: str = "electing"
    generator: EventGenerator | None = None
    _hand_over: _HandOverState | None = None
    _changes_seen: int = 0
    _leaders: list[str] = field(default_factory=list)
    _checkpoint_noted: bool = False
    _first_noted: bool = False

    # -- the story -------------------------------------------------------------------------

    def play(self) -> int:
        """Everything up to and including the summary; returns the exit code."""
        try:
            self._elect()
            self._warm_up()
            self._stream()
            self._drain()
        except _Failed as exc:
            self.view.note(f"FAILED: {exc}")
            self._finish(str(exc))
            return EXIT_FAILED
        return self._finish(None)

    def keep_running(self) -> None:
        """``--keep``: events keep flowing until Ctrl-C."""
        self.phase = "kept running (Ctrl-C to stop)"
        admin = self.sim.kubeconfig
        self.view.show(
            "\neverything keeps running; Ctrl-C stops it all.\n"
            f"  kubectl --kubeconfig {admin} get events -A\n"
            + "".join(f"  curl http://127.0.0.1:{r.port}/health   # {r.name}\n"
                      for r in self.replicas)
            + f"  agent logs: {self.log_dir}")
        assert self.generator is not None
        self.generator.start()
        while True:
            self._tick()

    def stop_generator(self) -> None:
        if self.generator is not None:
            self.generator.stop()

    def _elect(self) -> None:
        deadline = time.monotonic() + _ELECT_TIMEOUT_S
        while not self.monitor.snapshot().holder:
            if time.monotonic() > deadline:
                raise _Failed(f"no replica took the lock within {_ELECT_TIMEOUT_S:.0f}s "
                              f"(see the logs in {self.log_dir})")
            self._tick()

    def _warm_up(self) -> None:
        """Uncounted events until one arrives: the event worker now watches."""
        self.phase = "waiting for the event worker"
        self.generator = EventGenerator(self.sim.api_client(), rate=self.options.rate)
        self.generator.create_namespaces()
        deadline = time.monotonic() + _WARMUP_TIMEOUT_S
        markers: list[str] = []
        next_probe = 0.0
        while not any(self.intake.seen_warmup(m) for m in markers):
            now = time.monotonic()
            if now > deadline:
                leader = replica_of(self.monitor.snapshot().holder, self.replicas)
                log = leader.log_path if leader else self.log_dir
                raise _Failed(f"the leader's event worker delivered nothing within "
                              f"{_WARMUP_TIMEOUT_S:.0f}s (see {log})")
            if now >= next_probe:
                markers.append(self.generator.warmup())
                next_probe = now + 1.0
            self._tick()
        first = self.intake.snapshot().first_event_at or time.monotonic()
        self.view.note(f"the event worker delivers: first Datadog event at the intake "
                       f"{first - self.started:.1f}s after start")

    def _stream(self) -> None:
        assert self.generator is not None
        self.phase = "streaming events"
        self.generator.start()
        begin = time.monotonic()
        end = begin + self.options.duration_s
        hand_over_at = begin + self.options.handover_at * self.options.duration_s
        while time.monotonic() < end:
            if self._hand_over is None and time.monotonic() >= hand_over_at:
                self._stop_leader()
            self._tick()
        self.generator.stop()

    def _drain(self) -> None:
        assert self.generator is not None
        self.phase = "draining"
        deadline = time.monotonic() + max(15.0, 3 * self.options.lease_s)
        wanted = {g.marker for g in self.generator.generated()}
        self.view.note(f"stream stopped after {len(wanted)} events; waiting for the last ones")
        while not wanted <= self.intake.appearances().keys():
            if time.monotonic() > deadline:
                return  # the summary counts what is missing
            self._tick()
        settle = time.monotonic() + _SETTLE_S
        while time.monotonic() < settle:
            self._tick()

    # -- the hand-over -------------------------------------------------------------------

    def _stop_leader(self) -> None:
        holder = self.monitor.snapshot().holder
        leader = replica_of(holder, self.replicas)
        if leader is None or not leader.alive():
            return  # nobody leads right now: try again next tick
        signum = signal.SIGKILL if self.options.crash else signal.SIGTERM
        self._hand_over = _HandOverState(signum.name, leader, holder, time.monotonic())
        leader.send(signum)
        what = "crash" if self.options.crash else "graceful hand-over"
        self.view.note(f"{signum.name} to the leader {leader.name} (pid {leader.pid}): {what}")

    def _advance_hand_over(self, observed: Observed) -> None:
        h = self._hand_over
        if h is None:
            return
        now = time.monotonic()
        if h.new is None:
            for change in observed.changes:
                if change.at > h.at and change.holder not in ("", h.old_identity):
                    h.new = replica_of(change.holder, self.replicas)
                    h.lock_s = change.at - h.at
                    name = h.new.name if h.new else change.holder
                    self.view.note(f"take-over: {name} holds the lock {h.lock_s:.2f}s after "
                                   f"the {h.signal}")
                    break
        if h.new is not None and h.first_event_s is None:
            arrival = self.intake.first_arrival(after=h.at, sender=h.new.name)
            if arrival is not None:
                h.first_event_s = arrival.at - h.at
                self.view.note(f"{h.new.name}'s first events reached the intake "
                               f"{h.first_event_s:.2f}s after the {h.signal}")
        if h.old.alive() and now > h.at + self.options.shutdown_timeout_s + 2:
            h.old.send(signal.SIGKILL)  # a hand-over must not hang the demo
        if not h.restarted and not h.old.alive() and (
                h.new is not None or now > h.at + 3 * self.options.lease_s):
            h.restarted = True
            h.old.start()
            self.view.note(f"{h.old.name} restarted (pid {h.old.pid}); it rejoins as a follower")

    # -- every tick ----------------------------------------------------------------------------

    def _tick(self) -> None:
        observed = self.monitor.snapshot()
        self._note_changes(observed)
        self._advance_hand_over(observed)
        self.view.refresh(Frame(
            elapsed=time.monotonic() - self.started, phase=self.phase, observed=observed,
            intake=self.intake.snapshot(),
            generated=self.generator.count if self.generator else 0,
            generator_errors=self.generator.errors if self.generator else 0,
            leader=_leader(observed),
        ))
        self.stopper.sleep(_TICK_S)

    def _note_changes(self, observed: Observed) -> None:
        for change in observed.changes[self._changes_seen:]:
            if change.holder:
                replica = replica_of(change.holder, self.replicas)
                name = replica.name if replica else change.holder
                if not self._leaders or self._leaders[-1] != name:
                    self._leaders.append(name)
                self.view.note(f"lock {LOCK}: held by {change.holder} "
                               f"({name} leads; leaderTransitions {observed.transitions})")
            else:
                self.view.note(f"lock {LOCK}: released")
        self._changes_seen = len(observed.changes)
        if observed.token_writes and not self._checkpoint_noted:
            self._checkpoint_noted = True
            self.view.note(f"token checkpointed: ConfigMap datadogtoken event.tokenKey="
                           f"{observed.token}")

    # -- the summary ---------------------------------------------------------------------------

    def _finish(self, failure: str | None) -> int:
        generated = self.generator.generated() if self.generator else []
        t = tally(generated, self.intake.appearances())
        h = self._hand_over
        hand_over = None if h is None else HandOver(
            h.signal, h.old.name, h.new.name if h.new else "", h.lock_s, h.first_event_s)
        passed, reason = verdict(t, hand_over, crash=self.options.crash)
        if failure is not None:
            passed, reason = False, failure
        elif h is None:
            passed, reason = False, "the leader was never stopped (the stream ended first)"
        first_at = self.intake.snapshot().first_event_at
        gen = self.generator
        last_first = max((min(a.at for a in seen) for seen in self.intake.appearances().values()),
                         default=None)
        timings = Timings(
            first_event_s=None if first_at is None else first_at - self.started,
            summary_s=time.monotonic() - self.started,
            generate_s=((gen.stopped_at or time.monotonic()) - gen.started_at)
            if gen and gen.started_at else 0.0,
            delivered_span_s=(last_first - gen.started_at)
            if gen and gen.started_at and last_first else None,
        )
        observed = self.monitor.snapshot()
        text = render(t, hand_over, observed.transitions, self._leaders, timings, passed, reason)
        if not self.options.keep:
            self.view.close()
        self.view.show(text)
        self.summarised = True
        return EXIT_OK if passed else EXIT_FAILED


def _leader(observed: Observed) -> str:
    """Who leads, by the lock; a dead holder is named as such until its lease runs out."""
    if not observed.holder:
        return ""
    for replica in observed.replicas:
        if replica.alive and replica.identity == observed.holder:
            return replica.name
    if any(r.role == "starting" for r in observed.replicas):
        return observed.holder  # its /health may simply not answer yet
    return f"none ({observed.holder} is gone; its lease has not expired yet)"
