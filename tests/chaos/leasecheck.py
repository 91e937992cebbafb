"""Workers against the lock, instant by instant (issue 4: "a worker never outlives its
leader's lease"; fencing stops them "before any follower may take over").

Inputs are exact on both sides: every write of the lock as kubesim's store made it (time,
holder, lease duration) and every worker process's life as sampled every 10 ms (a worker
was certainly alive at its first and last sample). Both clocks are CLOCK_MONOTONIC.

- ``outlived``: a worker seen alive later than its replica's last lock write plus that
  write's lease duration. Followers judge expiry a whole lease after they *see* a write,
  which is no earlier than the write itself: from then on another replica may lead.
- ``overlapped``: the lock written by another replica while a worker was alive.
"""

from __future__ import annotations

import bisect
from typing import Any

from watchers import WorkerRun

__all__ = ["lock_overlaps", "outlived_leases", "replica_of"]

LockWrite = tuple[float, str, int]
"""(when, holder identity, lease duration s)."""


def replica_of(holder: str) -> str:
    """``replica-1-a3f9c2`` (pod name plus the per-start suffix) -> ``replica-1``."""
    return holder.rsplit("-", 1)[0] if holder else ""


def outlived_leases(writes: list[LockWrite], runs: list[WorkerRun],
                    t0: float = 0.0) -> list[dict[str, Any]]:
    times = [w[0] for w in writes]
    found = []
    for run in runs:
        i = bisect.bisect_right(times, run.last_seen)
        own = next((w for w in reversed(writes[:i]) if replica_of(w[1]) == run.replica), None)
        if own is None:
            found.append({"worker": f"{run.replica}/{run.name} pid {run.pid}",
                          "problem": "alive without its replica ever holding the lock",
                          "seen_s": round(run.last_seen - t0, 3)})
        elif run.last_seen > own[0] + own[2]:
            found.append({"worker": f"{run.replica}/{run.name} pid {run.pid}",
                          "last_renewal_s": round(own[0] - t0, 3), "lease_s": own[2],
                          "seen_alive_s": round(run.last_seen - t0, 3),
                          "beyond_lease_s": round(run.last_seen - own[0] - own[2], 3)})
    return found


def lock_overlaps(writes: list[LockWrite], runs: list[WorkerRun],
                  t0: float = 0.0) -> list[dict[str, Any]]:
    found = []
    for when, holder, _lease in writes:
        other = replica_of(holder)
        if not other:
            continue
        for run in runs:
            if run.replica != other and run.first_seen <= when <= run.last_seen:
                found.append({"worker": f"{run.replica}/{run.name} pid {run.pid}",
                              "lock_written_by": holder, "at_s": round(when - t0, 3)})
    return found
