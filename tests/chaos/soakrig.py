"""The soak's cluster: kubesim, a local intake, three agent replicas, the stream, the watchers.

    soak = Soak(sim, intake, workdir, settings)
    soak.start()                      # replicas elected, first token persisted, stream on
    record = fault(soak, rng, n)      # see faultdeck
    soak.wait_recovered(record)       # one leader with its workers, caught up, checkpointed
    soak.drain(); soak.stop_all()

Everything waits on deadlines and raises ``SoakFailure`` (its text names the seed) when one
passes: a cluster that does not recover from a fault is a finding, not a flake to retry.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from agent_harness import Replica, Replicas
from eventstream import EventStream
from intake_server import LocalIntake
from ledger import Ledger
from watchers import ClusterWatch, HealthWatch, ProcessWatch, ProcKey, still_alive, tree

from kubesim.runner import KubeSim

__all__ = ["FaultRecord", "Soak", "SoakFailure", "SoakSettings"]

API_KEY = "0123456789abcdef0123456789abcdef"
NAMESPACE = "default"
LOCK_NAME = "datadog-leader-election"
REPLICAS = 3


class SoakFailure(AssertionError):
    pass


def _utc_now() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def _name_of(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"{proc.name()} ({proc.status()})"
    except psutil.Error:
        return "gone"


@dataclass(frozen=True)
class SoakSettings:
    seed: int
    seconds: float
    lease_s: int = 3
    checkpoint_s: float = 1.0
    heartbeat_s: float = 0.5
    batch_max: int = 50
    """Kubernetes events per intake batch: the unit of the "one batch per kill" bound."""
    flush_s: float = 0.2
    rate: float = 40.0
    """New occurrences a second (a quarter of them repeats of earlier events)."""
    start_s: float = 90.0
    recovery_s: float = 45.0
    drain_s: float = 45.0
    checkpoint_slack_s: float = 1.0
    """Beyond the checkpoint interval, how far the persisted token may lag the last
    acknowledgement (Progress over the pipe, the ConfigMap write) on a loaded box."""

    @property
    def renew_deadline_s(self) -> float:
        return self.lease_s / 2

    def replay(self) -> str:
        return f"CHAOS_SEED={self.seed} CHAOS_SECONDS={self.seconds:g}"

    @classmethod
    def from_env(cls) -> SoakSettings:
        """``CHAOS_SEED`` (default: a fresh random one, printed) and ``CHAOS_SECONDS`` (60);
        the same object for the whole session, so every reader sees the same seed."""
        global _FROM_ENV
        if _FROM_ENV is None:
            seed = os.environ.get("CHAOS_SEED", "").strip()
            _FROM_ENV = cls(
                seed=int(seed) if seed else random.SystemRandom().randrange(1, 2**31),
                seconds=float(os.environ.get("CHAOS_SECONDS", "") or 60),
            )
        return _FROM_ENV


_FROM_ENV: SoakSettings | None = None


@dataclass
class FaultRecord:
    n: int
    kind: str
    detail: str
    started: float
    ended: float = 0.0
    """When the fault condition was removed (the cluster may still be recovering)."""
    recovered: float | None = None
    victim: str = ""
    victim_was_leader: bool = False
    facts: dict[str, Any] = field(default_factory=dict)
    wall: str = field(default_factory=lambda: _utc_now())
    """UTC wall time of the start, to find the fault in the replicas' logs."""

    def row(self, t0: float) -> dict[str, Any]:
        return {"n": self.n, "kind": self.kind, "detail": self.detail, "wall": self.wall,
                "at_s": round(self.started - t0, 2),
                "recovery_s": None if self.recovered is None
                else round(self.recovered - self.started, 2),
                "victim": self.victim, "victim_was_leader": self.victim_was_leader,
                **self.facts}


def config_yaml(*, tags: tuple[str, ...] = (), flush_s: float = 0.2,
                controlplane_s: float = 1.0) -> str:
    """The replicas' datadog.yaml: only what SIGHUP may change (DD_* env wins over it)."""
    lines = [f"event_flush_interval: {flush_s}", f"controlplane_check_interval: {controlplane_s}"]
    lines.append("tags: [" + ", ".join(f'"{t}"' for t in tags) + "]")
    return "\n".join(lines) + "\n"


class Soak:
    def __init__(self, sim: KubeSim, intake: LocalIntake, workdir: Path,
                 settings: SoakSettings) -> None:
        self.sim = sim
        self.intake = intake
        self.settings = settings
        self.config_text = config_yaml(flush_s=settings.flush_s)
        env = {
            "DD_API_KEY": API_KEY, "DD_DD_URL": intake.url,
            "DD_COLLECT_KUBERNETES_EVENTS": "true", "DD_COLLECT_CONTROLPLANE_CHECKS": "true",
            "DD_LEADER_LEASE_DURATION": str(settings.lease_s),
            "DD_TOKEN_CHECKPOINT_INTERVAL": str(settings.checkpoint_s),
            "DD_WORKER_HEARTBEAT_INTERVAL": str(settings.heartbeat_s),
            "DD_WORKER_RESTART_BACKOFF_MIN": "0.2", "DD_WORKER_RESTART_BACKOFF_MAX": "2",
            "DD_EVENT_BATCH_MAX": str(settings.batch_max),
            "DD_LOG_LEVEL": os.environ.get("CHAOS_LOG_LEVEL", "info"),
            "DD_SHUTDOWN_TIMEOUT": "10",
        }
        self.fleet = Replicas(sim, workdir, env=env, datadog_yaml=self.config_text)
        self.ledger = Ledger(intake)
        self.stream = EventStream(sim, self.ledger, rng=random.Random(settings.seed * 7919 + 1),
                                  rate=settings.rate)
        self.processes = ProcessWatch()
        self.cluster = ClusterWatch(sim, self.ledger, namespace=NAMESPACE, lock_name=LOCK_NAME)
        self.health = HealthWatch(self.fleet)
        self.t0 = time.monotonic()
        self.stream_started = 0.0
        self.faults: list[FaultRecord] = []
        self.exit_codes: dict[str, int | None] = {}

    # -- helpers ----------------------------------------------------------------------------

    def fail(self, what: str, **context: Any) -> SoakFailure:
        extra = "".join(f"\n  {k}: {v}" for k, v in context.items())
        return SoakFailure(f"[{self.settings.replay()}] {what}{extra}")

    def wait(self, predicate: Any, timeout: float, what: str, **context: Any) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            broken = self.stream.error or self.cluster.error or self.health.error
            if broken is not None:
                raise self.fail(f"a soak thread failed while waiting for {what}: {broken!r}")
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise self.fail(f"timed out after {timeout:g} s waiting for {what}",
                                **context, state=self.describe())
            time.sleep(0.02)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.fleet:
            state = r.state() if r.alive() else None
            out[r.name] = {
                "alive": r.alive(), "pid": r.proc.pid if r.proc else None,
                "role": state and state.get("role"),
                "workers": r.worker_pids(),
                "pool": state and [(w.get("kind"), w.get("state"), w.get("pid"),
                                    w.get("last_exit_reason")) for w in state.get("workers", [])],
                "problems": state and state.get("problems"),
                "tree": [(pid, _name_of(pid)) for pid, _ in tree(r.proc.pid)]
                if r.alive() and r.proc else [],
                "token": state and state.get("token"),
            }
        out["configmap_token"] = self.cluster.token_rv
        out["holder"] = self.cluster.holder
        written, acked = self.ledger.counts()
        out["occurrences"] = f"{acked}/{written} acknowledged"
        return out

    # -- the fleet ---------------------------------------------------------------------------

    def start(self) -> None:
        self.processes.start()
        for i in range(REPLICAS):
            self.fleet.add(env={"DD_HOSTNAME": f"replica-{i}",
                                "DD_KUBERNETES_KUBECONFIG_PATH": self._credentials(i)}).start()
        self.cluster.start()
        self.health.start()
        leader = self.wait(self.settled_leader, self.settings.start_s, "a first leader with "
                           "both workers")
        self.wait(lambda: self.cluster.token_rv is not None, self.settings.start_s,
                  f"a first token in the ConfigMap (leader {leader.name})")
        self.stream.start()
        self.stream_started = time.monotonic()

    def _credentials(self, i: int) -> str:
        """A kubeconfig of replica ``i``'s own service account (bound to cluster-admin), so
        a fault can target one replica's requests: ``user=soak.user_of(replica)``."""
        name = f"agent-{i}"
        token = self.sim.issue_token(NAMESPACE, name)
        self.sim.create("clusterrolebindings", {
            "metadata": {"name": f"chaos-{name}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
        })
        return self.sim.kubeconfig_for(token, self.fleet.workdir / f"{name}.kubeconfig")

    def user_of(self, replica: Replica) -> str:
        """A regex matching exactly the API user of ``replica`` (a fault's ``user``)."""
        return f"^system:serviceaccount:{NAMESPACE}:agent-{replica.name.rsplit('-', 1)[1]}$"

    def leader_by_health(self) -> Replica | None:
        leaders = [r for r in self.fleet if r.alive() and r.is_leader()]
        return leaders[0] if len(leaders) == 1 else None

    def settled_leader(self) -> Replica | None:
        """The one leader, running both workers, with nobody else running any."""
        leader = self.leader_by_health()
        if leader is None or set(leader.worker_pids()) != {"events", "controlplane"}:
            return None
        if any(r.worker_pids() for r in self.fleet if r is not leader):
            return None
        state = leader.state() or {}
        if any(w.get("state") != "running" for w in state.get("workers", [])):
            return None
        return leader

    def wait_recovered(self, record: FaultRecord) -> None:
        """Everyone up, one settled leader, everything written so far acknowledged and the
        ConfigMap token past it: the next fault starts from a clean slate."""
        deadline = self.settings.recovery_s
        context = {"fault": record.row(self.t0)}
        self.wait(lambda: all(r.alive() and r.state() is not None for r in self.fleet),
                  deadline, "every replica up and answering /health", **context)
        self.wait(self.settled_leader, deadline, "one leader with both workers", **context)
        newest = self.ledger.newest_written()
        if newest is not None:
            self.wait(lambda: self.ledger.acked(newest.key), deadline,
                      f"the stream caught up (ck{newest.eid}-{newest.count} acknowledged)",
                      **context)
            self.wait(lambda: (self.cluster.token_rv or 0) >= newest.rv, deadline,
                      f"the ConfigMap token past resourceVersion {newest.rv}", **context)
        record.recovered = time.monotonic()

    def write_config(self, text: str) -> None:
        for r in self.fleet:
            assert r.config_path is not None
            r.config_path.write_text(text)

    def sighup_all(self) -> list[Replica]:
        alive = [r for r in self.fleet if r.alive()]
        for r in alive:
            r.signal(signal.SIGHUP)
        return alive

    # -- the end ----------------------------------------------------------------------------

    def drain(self) -> float:
        """Stop the stream; wait until every occurrence is acknowledged and checkpointed."""
        t = time.monotonic()
        self.stream.stop()
        newest = self.ledger.newest_written()
        if newest is None:
            raise self.fail("the stream wrote nothing")
        with contextlib.suppress(SoakFailure):
            self.wait(lambda: not self.ledger.lost(), self.settings.drain_s,
                      "every occurrence acknowledged")
            self.wait(lambda: (self.cluster.token_rv or 0) >= newest.rv, 10.0,
                      "the final token persisted")
        return time.monotonic() - t

    def stop_watchers(self) -> None:
        self.cluster.stop()
        self.health.stop()
        self.processes.stop()
        self.ledger.refresh()

    def stop_all(self) -> None:
        """SIGTERM every replica; each must exit 0 (recorded in ``exit_codes``)."""
        for r in self.fleet:
            if r.alive():
                r.signal(signal.SIGTERM)
        for r in self.fleet:
            try:
                self.exit_codes[r.name] = r.wait(20) if r.proc else None
            except subprocess.TimeoutExpired:  # recorded as no exit code; teardown kills it
                self.exit_codes[r.name] = None
            r.stop_files()

    def leftovers(self, timeout: float = 10.0) -> list[ProcKey]:
        """Processes ever seen in a replica that are still alive ``timeout`` s from now."""
        deadline = time.monotonic() + timeout
        while (left := still_alive(self.processes.known)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left
