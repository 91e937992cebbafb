"""The soak's continuous invariant checks, each a sampler thread.

``ProcessWatch``  every 10 ms, in a process of its own (procwatch.py): two replicas with
                  live workers at once (orphaned workers count too), orphans (a process of
                  a dead supervisor still alive after a grace), worker runs, RSS.
``ClusterWatch``  every 50 ms: the ConfigMap token (never backwards), the commit point
                  (the token never passes an occurrence the intake has not acknowledged),
                  the lock holder (leader changes).
``HealthWatch``   every 250 ms: each replica's /health (role, in-memory token, reloads).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from agent_harness import Replicas
from ledger import Ledger
from podtree import ProcKey, alive

from kubesim.resources import find
from kubesim.runner import KubeSim
from supervisor.checkpoint import TOKEN_CONFIGMAP, TOKEN_KEY
from supervisor.locks import LEADER_ANNOTATION, LeaderRecord

__all__ = ["ClusterWatch", "HealthWatch", "ProcessWatch", "WorkerRun", "still_alive", "tree"]

_HERE = Path(__file__).resolve().parent
_LOCK_BUCKET = find("endpoints").bucket


@dataclass
class WorkerRun:
    replica: str
    name: str
    pid: int
    first_seen: float
    last_seen: float


class _Thread:
    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self.samples = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> _Thread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample(time.monotonic())
            except BaseException as exc:  # a broken checker must fail the test, not go quiet
                self.error = exc
                return
            self.samples += 1
            self._stop.wait(self.interval)

    def sample(self, now: float) -> None:
        raise NotImplementedError


class ProcessWatch:
    """Runs ``procwatch.py`` (a process of its own: see there) and holds its summary."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.proc: subprocess.Popen[str] | None = None
        self.samples = 0
        self.overlap_count = 0
        self.overlaps: list[dict[str, dict[str, int]]] = []
        self.gap_ms: dict[str, Any] = {}
        self.orphans: list[dict[str, Any]] = []
        self.worker_runs: list[WorkerRun] = []
        self.rss_max: dict[str, tuple[int, str]] = {}
        self.rss_growth: dict[str, int] = {}
        self.known: list[ProcKey] = []
        self.cpu_s = 0.0
        self.error = ""

    def start(self) -> ProcessWatch:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(_HERE.parent), str(_HERE.parents[1]), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(_HERE / "procwatch.py"), str(os.getpid()), str(self.interval)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().strip()
        if ready != "READY":
            raise RuntimeError(f"procwatch did not start: {ready!r}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            out, _ = self.proc.communicate(timeout=30)
            summary = json.loads(out.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            self.proc.kill()
            self.error = f"procwatch gave no summary: {exc!r}"
            return
        finally:
            self.proc = None
        self.samples = summary["samples"]
        self.overlap_count = summary["overlap_count"]
        self.overlaps = summary["overlaps"]
        self.gap_ms = summary["gap_ms"]
        self.orphans = summary["orphans"]
        self.worker_runs = [WorkerRun(r["replica"], r["name"], r["pid"], r["first"], r["last"])
                            for r in summary["runs"]]
        self.rss_max = {k: (v[0], v[1]) for k, v in summary["rss_max"].items()}
        self.rss_growth = summary["rss_growth"]
        self.known = [(pid, created) for pid, created in summary["known"]]
        self.cpu_s = summary["cpu_s"]


def still_alive(keys: list[ProcKey]) -> list[ProcKey]:
    """Those of ``keys`` (pid, create time) still running (zombies do not count)."""
    return [k for k in keys if alive(k)]


def tree(pid: int) -> list[ProcKey]:
    """``pid`` and its descendants, as (pid, create time)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out.append((p.pid, p.create_time()))
    return out


class ClusterWatch(_Thread):
    """ConfigMap token and lock holder, straight from kubesim's store (no HTTP, no faults)."""

    def __init__(self, sim: KubeSim, ledger: Ledger, *, namespace: str, lock_name: str,
                 interval: float = 0.05) -> None:
        super().__init__(interval, "cluster-watch")
        self.sim = sim
        self.ledger = ledger
        self.namespace = namespace
        self.lock_name = lock_name
        self.token_rv: int | None = None
        self.token_changes: list[tuple[float, int]] = []
        self.token_regressions: list[dict[str, Any]] = []
        self.holder = ""
        self.holder_changes: list[tuple[float, str, int]] = []
        """(when, new holder identity ("" = released), leaderTransitions)."""
        self.lock_writes: list[tuple[float, str, int]] = []
        """Every write of the lock, seen by the store itself: (when, holder, lease s)."""
        self.early_takeovers: list[dict[str, Any]] = []
        self._lock_key = f"{namespace}/{lock_name}"
        sim.call(sim.store.on_write.append, self._on_write)

    def _on_write(self, bucket: str, stored: Any) -> None:
        """On kubesim's loop, for every write: keep the lock's, check each take-over.

        A follower may take the lock only once a whole lease has passed since it last saw
        the record change, and it cannot see a change before it is written: so a take-over
        written sooner than a lease after the previous holder's last write is premature."""
        if bucket != _LOCK_BUCKET or stored.key != self._lock_key:
            return
        now = time.monotonic()
        text = (stored.obj.get("metadata", {}).get("annotations") or {}).get(LEADER_ANNOTATION)
        record = LeaderRecord.from_annotation(text) if text else LeaderRecord()
        holder, lease = record.holder_identity, record.lease_duration_seconds
        if self.lock_writes:
            at, before, before_lease = self.lock_writes[-1]
            if before and holder and holder != before and now - at < before_lease:
                self.early_takeovers.append({
                    "at": round(now, 3), "from": before, "to": holder,
                    "after_s": round(now - at, 3), "lease_s": before_lease})
        self.lock_writes.append((now, holder, lease))

    def sample(self, now: float) -> None:
        cm = self.sim.get("configmaps", TOKEN_CONFIGMAP, self.namespace)
        key = str(((cm or {}).get("data") or {}).get(TOKEN_KEY) or "")
        if key.isdigit():
            rv = int(key)
            if self.token_rv is not None and rv < self.token_rv:
                self.token_regressions.append({"at": round(now, 3), "from": self.token_rv,
                                               "to": rv})
            if rv != self.token_rv:
                self.token_changes.append((now, rv))
            self.token_rv = rv
            self.ledger.refresh()  # after reading the token: see Ledger.check_commit
            self.ledger.check_commit(rv, now)
        else:
            self.ledger.refresh()
        ep = self.sim.get("endpoints", self.lock_name, self.namespace)
        annotation = ((ep or {}).get("metadata") or {}).get("annotations", {}).get(
            LEADER_ANNOTATION)
        if annotation:
            record = LeaderRecord.from_annotation(annotation)
            if record.holder_identity != self.holder:
                self.holder = record.holder_identity
                self.holder_changes.append((now, self.holder, record.leader_transitions))

    def leader_changes_between(self, t0: float, t1: float) -> list[tuple[float, str, int]]:
        """Holder changes to a non-empty identity in [t0, t1] (a release is no new leader)."""
        return [c for c in list(self.holder_changes) if t0 <= c[0] <= t1 and c[1]]


class HealthWatch(_Thread):
    """Each replica's /health: the in-memory token per supervisor instance never goes back
    while it leads; the latest document per replica is kept for the recovery checks."""

    def __init__(self, fleet: Replicas, *, interval: float = 0.25) -> None:
        super().__init__(interval, "health-watch")
        self.fleet = fleet
        self.latest: dict[str, tuple[float, dict[str, Any]]] = {}
        self.token_regressions: list[dict[str, Any]] = []
        self.role_drops: list[tuple[float, str]] = []
        """(when, replica) a replica seen leading was next seen following, or dead."""
        self._tokens: dict[str, tuple[int, str]] = {}
        self._roles: dict[str, str] = {}
        self.workers_seen: set[tuple[str, str, int]] = set()
        """(replica, kind, pid) of every worker /health reported running: the process
        watch must have seen each of them too, or it is blind somewhere."""

    def sample(self, now: float) -> None:
        for replica in list(self.fleet.replicas):
            alive = replica.alive()
            state = replica.state() if alive else None
            if state is None and alive:
                continue  # no answer (busy, or dying): no evidence either way
            role = str(state.get("role")) if state else "gone"
            if self._roles.get(replica.name) == "leader" and role != "leader":
                self.role_drops.append((now, replica.name))
            self._roles[replica.name] = role
            if state is None:
                continue
            self.latest[replica.name] = (time.monotonic(), state)
            for worker in state.get("workers") or ():
                if worker.get("state") == "running" and worker.get("pid"):
                    self.workers_seen.add((replica.name, str(worker["kind"]), int(worker["pid"])))
            identity = str(state.get("identity"))
            key = str((state.get("token") or {}).get("key") or "")
            if not key.isdigit():
                continue
            last = self._tokens.get(identity)
            if last is not None and int(key) < last[0]:
                self.token_regressions.append({
                    "at": round(now, 3), "identity": identity, "from": last[0],
                    "to": int(key), "role_before": last[1], "role_now": state.get("role"),
                })
            self._tokens[identity] = (int(key), str(state.get("role")))
