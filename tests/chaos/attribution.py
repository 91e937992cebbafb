"""Which fault caused which duplicate, and the bound each cause is held to.

A duplicate (an occurrence acknowledged more than once) can only come from:
- a *replay*: a new events-worker run starting from a token behind what was already
  acknowledged. Within one leadership the restarted worker gets the supervisor's in-memory
  token, so it repeats at most the batch that was in flight (issue 8: <= one batch per
  worker kill). After a leadership loss that was not a hand-over, the next leader starts from
  the ConfigMap, so it repeats what was acknowledged since the last checkpoint: at most the
  occurrences first acknowledged in the exposure window (checkpoint interval + slack before
  the loss; plus the renew deadline when the leader was fenced rather than killed) plus the
  batch in flight. A SIGTERM hand-over persists the final token: one batch at most.
- a lost response: the intake stored a payload but the agent never saw the 2xx (the intake
  went down mid-request), so the batch is retried: one batch per intake outage.

Every extra copy is attributed to the latest trigger (a fault, or a worker run no fault
explains) that started before it arrived. After a leadership loss, every replayed
occurrence must also have been first acknowledged inside the exposure window: a replay of
anything older means the checkpoint lagged more than documented.

Leadership losses are seen three ways: the lock holder changing, a leader's /health turning
follower (or its process gone), and the supervisor's own "fencing" log line (which also
catches a leader that re-won at once).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger import Copy
from soakrig import FaultRecord, Soak
from watchers import WorkerRun

__all__ = ["Trigger", "attribute", "fencing_times"]

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z .*fencing \(stopping workers\)",
                       re.MULTILINE)


@dataclass
class Trigger:
    cause: str
    n: int | None
    start: float
    end: float
    bound: int = 0
    basis: list[str] = field(default_factory=list)
    duplicates: int = 0
    exposure: tuple[float, float] | None = None
    """After a leadership loss: what may be replayed was first acknowledged in this window."""
    first_copies: list[Copy] = field(default_factory=list)
    """First acknowledgement of every occurrence this trigger duplicated."""
    late_by_new_run: int = 0
    """Of those first acknowledged after the window, how many a worker run started after
    the loss had delivered (set by ``attribute``)."""

    @property
    def outside_exposure(self) -> int:
        """Replayed occurrences first acknowledged outside the exposure window (must be 0)."""
        return self.acked_before_exposure + self.acked_after_exposure

    @property
    def acked_before_exposure(self) -> int:
        """Replays of what was acknowledged before the window: the checkpoint lagged."""
        return 0 if self.exposure is None else sum(1 for c in self.first_copies
                                                   if c.at < self.exposure[0])

    @property
    def acked_after_exposure(self) -> int:
        """Replays of what was acknowledged after the window: by the old leader's workers
        (they outlived fencing) or by a run started after the loss (a re-elected leader then
        replayed it again: it resumed from the ConfigMap, behind what it had delivered)."""
        return 0 if self.exposure is None else sum(1 for c in self.first_copies
                                                   if c.at > self.exposure[1])

    def row(self, t0: float) -> dict[str, Any]:
        oldest = min((c.at for c in self.first_copies), default=None)
        return {"cause": self.cause, "n": self.n, "at_s": round(self.start - t0, 2),
                "duplicates": self.duplicates, "bound": self.bound,
                "basis": "; ".join(self.basis),
                "exposure_s": None if self.exposure is None
                else [round(self.exposure[0] - t0, 2), round(self.exposure[1] - t0, 2)],
                "oldest_replayed_ack_s": None if oldest is None else round(oldest - t0, 2),
                "outside_exposure": self.outside_exposure,
                "acked_before_exposure": self.acked_before_exposure,
                "acked_after_exposure": self.acked_after_exposure,
                "late_by_old_run": self.acked_after_exposure - self.late_by_new_run,
                "late_by_new_run": self.late_by_new_run}


def fencing_times(soak: Soak) -> list[float]:
    """Monotonic times of the supervisors' "fencing (stopping workers)" log lines."""
    offset = time.time() - time.monotonic()
    out = []
    for replica in soak.fleet:
        for stamp in _LOG_TIME.findall(replica.logs()):
            wall = datetime.fromisoformat(stamp + "+00:00").timestamp()
            out.append(wall - offset)
    return sorted(out)


def _losses(soak: Soak, t0: float, t1: float, fencings: list[float]) -> list[tuple[float, str]]:
    """Evidence of a leadership loss in [t0, t1]: (when, what)."""
    found = [(t, "fencing") for t in fencings if t0 <= t <= t1]
    found += [(t, f"lock to {h}") for t, h, _ in soak.cluster.leader_changes_between(t0, t1)]
    found += [(t, f"{r} stopped leading") for t, r in soak.health.role_drops if t0 <= t <= t1]
    return sorted(found)


def _bound(soak: Soak, trigger: Trigger, runs: int, fault: FaultRecord | None,
           fencings: list[float], evidence_from: float) -> None:
    s = soak.settings
    batch = s.batch_max
    if fault is not None and fault.kind == "intake_outage":
        trigger.bound += batch
        trigger.basis.append(f"lost 2xx: {batch}")
    if runs == 0:
        return
    losses = _losses(soak, evidence_from, trigger.end, fencings)
    killed = fault is not None and fault.kind == "supervisor_kill" and fault.victim_was_leader
    handed_over = (fault is not None and fault.kind == "supervisor_term"
                   and not any(what == "fencing" for _, what in losses))
    if killed:
        assert fault is not None
        # A request sent before the kill may still be answered 2xx just after it.
        lo, hi = fault.started - s.checkpoint_s - s.checkpoint_slack_s, fault.started + 0.5
        why = "killed leader"
    elif losses and not handed_over:
        at, what = losses[0]
        before = s.renew_deadline_s if what == "fencing" else float(s.lease_s)
        lo = at - before - s.checkpoint_s - s.checkpoint_slack_s
        hi = at + s.lease_s / 4  # fencing grace: the workers may still deliver meanwhile
        why = f"leadership lost ({what})"
    else:
        trigger.bound += runs * batch
        trigger.basis.append(f"{runs} worker run(s) x batch {batch}"
                             + (" (hand-over)" if handed_over else ""))
        return
    exposed = soak.ledger.first_acked_between(lo, hi)
    trigger.exposure = (lo, hi)
    trigger.bound += exposed + runs * batch
    trigger.basis.append(f"{why}: {exposed} acked in the {hi - lo:.1f} s exposure + "
                         f"{runs} x batch {batch}")


def attribute(soak: Soak) -> list[Trigger]:
    """Triggers in time order with their bounds and the duplicates attributed to each."""
    fencings = fencing_times(soak)
    runs = [r for r in soak.processes.worker_runs
            if r.name == "events" and r.first_seen > soak.stream_started]
    triggers: list[Trigger] = []
    windows = []
    for fault in soak.faults:
        end = fault.recovered or time.monotonic()
        trigger = Trigger(fault.kind, fault.n, fault.started, end)
        inside = [r for r in runs if fault.started <= r.first_seen <= end]
        _bound(soak, trigger, len(inside), fault, fencings, fault.started - 0.1)
        triggers.append(trigger)
        windows.append((fault.started, end))
    for run in runs:
        if not any(a <= run.first_seen <= b for a, b in windows):
            trigger = Trigger(f"unscheduled worker run ({run.replica})", None, run.first_seen,
                              run.first_seen + soak.settings.recovery_s)
            # The loss that caused it (if any) came up to a lease before the new run.
            _bound(soak, trigger, 1, None, fencings, run.first_seen - soak.settings.lease_s)
            triggers.append(trigger)
    triggers.sort(key=lambda t: t.start)
    orphans = Trigger("before any fault", None, 0.0, 0.0)
    for occ, copy in soak.ledger.extra_copies():
        owner = next((t for t in reversed(triggers) if t.start <= copy.at), orphans)
        owner.duplicates += 1
        owner.first_copies.append(occ.copies[0])
    for trigger in triggers:
        if trigger.exposure is not None:
            hi = trigger.exposure[1]
            trigger.late_by_new_run = sum(
                1 for c in trigger.first_copies
                if c.at > hi and _run_at(runs, c.sender, c.at, after=trigger.start))
    return ([orphans] if orphans.duplicates else []) + triggers


def _run_at(runs: list[WorkerRun], replica: str, at: float, *, after: float) -> bool:
    """Was ``replica``'s events worker at ``at`` one started after ``after``?"""
    return any(r.replica == replica and r.first_seen <= at <= r.last_seen + 0.05
               and r.first_seen > after for r in runs)
