"""Watching the demo from outside the agents: their /health, the lock and the token.

A background thread reads the lock record (``holderIdentity``, ``leaderTransitions``) and
ConfigMap ``datadogtoken`` straight from kubesim's store ten times a second, and each
replica's ``/health`` four times a second. The lock is what decides who leads, so the
hand-over is timed from it, not from what a replica believes about itself.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from demo.replicas import Replica
from kubesim.runner import KubeSim

__all__ = ["LOCK_NAME", "LockChange", "Monitor", "Observed", "ReplicaState"]

LOCK_NAME = "datadog-leader-election"
LOCK_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"
TOKEN_CONFIGMAP = "datadogtoken"
NAMESPACE = "default"
_TICK_S = 0.1
_HEALTH_EVERY = 3


@dataclass(frozen=True, slots=True)
class ReplicaState:
    name: str
    pid: int | None
    alive: bool
    starts: int
    role: str
    """leader | follower | starting (no /health yet) | stopped"""
    workers: tuple[tuple[str, str, int], ...]
    """(kind, state, restarts) per worker the replica reports."""
    problems: tuple[str, ...]
    identity: str = ""
    """The identity it campaigns with (``<pod name>-<suffix>``, new at every start)."""


@dataclass(frozen=True, slots=True)
class LockChange:
    at: float
    holder: str
    """The new ``holderIdentity``; "" when the lock was released."""


@dataclass(frozen=True, slots=True)
class Observed:
    replicas: tuple[ReplicaState, ...]
    holder: str
    transitions: int
    token: str
    token_timestamp: str
    token_written_at: float | None
    token_writes: int
    """Changes of the token seen in the ConfigMap (each a checkpoint)."""
    changes: tuple[LockChange, ...]


@dataclass
class _Latest:
    replicas: dict[str, ReplicaState] = field(default_factory=dict)
    holder: str = ""
    transitions: int = 0
    token: str = ""
    token_timestamp: str = ""
    token_written_at: float | None = None
    token_writes: int = 0
    changes: list[LockChange] = field(default_factory=list)


def replica_of(identity: str, replicas: list[Replica]) -> Replica | None:
    """The replica whose ``DD_POD_NAME`` the lock identity starts with (``<pod>-<suffix>``)."""
    for replica in replicas:
        if identity.startswith(f"{replica.name}-"):
            return replica
    return None


class Monitor:
    def __init__(self, sim: KubeSim, replicas: list[Replica]) -> None:
        self._sim = sim
        self._replicas = replicas
        self._lock = threading.Lock()
        self._latest = _Latest()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-monitor", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def snapshot(self) -> Observed:
        with self._lock:
            s = self._latest
            return Observed(
                replicas=tuple(s.replicas[r.name] for r in self._replicas
                               if r.name in s.replicas),
                holder=s.holder, transitions=s.transitions, token=s.token,
                token_timestamp=s.token_timestamp, token_written_at=s.token_written_at,
                token_writes=s.token_writes, changes=tuple(s.changes),
            )

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(_TICK_S):
            try:
                self._read_cluster()
            except (RuntimeError, TimeoutError):
                continue  # kubesim stopping
            if tick % _HEALTH_EVERY == 0:
                for replica in list(self._replicas):
                    state = _replica_state(replica)
                    replica.observe_family()
                    with self._lock:
                        self._latest.replicas[replica.name] = state
            tick += 1

    def _read_cluster(self) -> None:
        now = time.monotonic()
        lock = self._sim.get("endpoints", LOCK_NAME, NAMESPACE)
        record = _record(lock)
        configmap = self._sim.get("configmaps", TOKEN_CONFIGMAP, NAMESPACE) or {}
        data = configmap.get("data") or {}
        with self._lock:
            s = self._latest
            holder = str(record.get("holderIdentity") or "")
            if lock is not None and (holder != s.holder or not s.changes):
                s.changes.append(LockChange(now, holder))
            s.holder = holder
            s.transitions = int(record.get("leaderTransitions") or 0)
            token = str(data.get("event.tokenKey") or "")
            if token != s.token:
                if s.token:
                    s.token_writes += 1
                s.token_written_at = now
            s.token = token
            s.token_timestamp = str(data.get("event.tokenTimestamp") or "")


def _record(lock: dict[str, Any] | None) -> dict[str, Any]:
    if not lock:
        return {}
    raw = ((lock.get("metadata") or {}).get("annotations") or {}).get(LOCK_ANNOTATION)
    try:
        record = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _replica_state(replica: Replica) -> ReplicaState:
    alive = replica.alive()
    doc = replica.health() if alive else None
    if not alive:
        role = "stopped"
    elif doc is None:
        role = "starting"
    else:
        role = str(doc.get("role") or "?")
    workers = tuple(
        (str(w.get("kind")), str(w.get("state")), int(w.get("restarts") or 0))
        for w in (doc or {}).get("workers") or () if isinstance(w, dict)
    )
    problems = tuple(f"{k}: {v}" for k, v in ((doc or {}).get("problems") or {}).items())
    return ReplicaState(replica.name, replica.pid if alive else None, alive, replica.starts,
                        role, workers, problems, str((doc or {}).get("identity") or ""))
