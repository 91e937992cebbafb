"""The faults the soak deals, from one seeded RNG, and how each is applied.

Every fault is ``fault(soak, rng, n) -> FaultRecord``: it waits (on deadlines) for what it
needs, breaks one thing, records what it saw in ``facts`` and returns once the fault
condition is removed; the caller then waits for the cluster to recover. The deck holds every
kind (kills twice), is shuffled with the seeded RNG and dealt in order, so even a 60 s run
covers a different mix of kinds per seed and a long run covers them all many times.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

from agent_harness import Replica
from soakrig import FaultRecord, Soak, config_yaml
from watchers import still_alive, tree

__all__ = ["FAULTS", "FaultDeck"]

Fault = Callable[[Soak, random.Random, int], FaultRecord]


def _hold(seconds: float) -> None:
    """Keep a fault in place for its (seeded) duration: the schedule, not a synchronisation."""
    time.sleep(seconds)


def _leader(soak: Soak) -> Replica:
    return soak.wait(soak.settled_leader, soak.settings.recovery_s, "a settled leader")


def _events_stat(replica: Replica, key: str) -> float:
    state = replica.state() or {}
    worker = next((w for w in state.get("workers", []) if w["kind"] == "events"), {})
    return float((worker.get("stats") or {}).get(key, 0))


def worker_kill(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    leader = _leader(soak)
    kind = rng.choice(("events", "events", "controlplane"))
    pid = leader.worker_pids()[kind]
    record = FaultRecord(n, "worker_kill", f"SIGKILL the leader's {kind} worker",
                         time.monotonic(), victim=leader.name, victim_was_leader=True)
    os.kill(pid, signal.SIGKILL)
    record.ended = time.monotonic()
    soak.wait(lambda: leader.worker_pids().get(kind) not in (None, pid), 30,
              f"a new {kind} worker in {leader.name}")
    record.facts["restart_s"] = round(time.monotonic() - record.started, 2)
    return record


def _supervisor(soak: Soak, rng: random.Random, n: int, signum: signal.Signals) -> FaultRecord:
    leader = _leader(soak)
    followers = [r for r in soak.fleet if r is not leader and r.alive()]
    victim = leader if rng.random() < 0.7 or not followers else rng.choice(followers)
    identity = (victim.state() or {}).get("identity", "")
    pod = tree(victim.pid)
    kind = "supervisor_kill" if signum == signal.SIGKILL else "supervisor_term"
    whom = "the leader" if victim is leader else "a follower"
    record = FaultRecord(n, kind, f"{signum.name} {whom}", time.monotonic(), victim=victim.name,
                         victim_was_leader=victim is leader)
    victim.signal(signum)
    record.facts["exit_code"] = victim.wait(30)
    record.facts["exit_s"] = round(time.monotonic() - record.started, 2)
    deadline = time.monotonic() + 5.0
    while (left := still_alive(pod)) and time.monotonic() < deadline:
        time.sleep(0.01)
    record.facts["tree_gone_s"] = round(time.monotonic() - record.started, 2)
    record.facts["left_behind"] = [pid for pid, _ in left]
    if victim is leader:
        soak.wait(lambda: soak.cluster.holder not in ("", identity), soak.settings.recovery_s,
                  "another replica to take the lock")
        record.facts["takeover_s"] = round(time.monotonic() - record.started, 2)
    _hold(round(rng.uniform(0.0, 1.0), 2))  # the pod's restart delay
    victim.start()
    record.ended = time.monotonic()
    return record


def supervisor_kill(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    return _supervisor(soak, rng, n, signal.SIGKILL)


def supervisor_term(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    return _supervisor(soak, rng, n, signal.SIGTERM)


def api_errors(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    status = rng.choice((500, 500, 429, 503))
    path = rng.choice((None, "/events", "datadog-leader-election", "datadogtoken"))
    rate = round(rng.uniform(0.3, 0.8), 2)
    seconds = round(rng.uniform(2.0, 5.0), 1)
    record = FaultRecord(n, "api_errors", f"{status} on {int(rate * 100)}% of "
                         f"{path or 'all'} requests for {seconds} s", time.monotonic())
    fid = soak.sim.inject_fault(status=status, rate=rate, path=path, duration=seconds)
    _hold(seconds)
    soak.sim.remove_fault(fid)
    record.ended = time.monotonic()
    return record


def watch_drop(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    leader = _leader(soak)
    before = _events_stat(leader, "watch_errors_total")
    path = rng.choice((None, "/events"))
    seconds = round(rng.uniform(1.0, 3.0), 1)
    after = round(rng.uniform(0.1, 0.5), 2)
    record = FaultRecord(n, "watch_drop", f"cut {path or 'all'} watches, then for {seconds} s "
                         f"every new one after {after} s", time.monotonic())
    # kubesim cuts open watches only for a rule without drop_after: one of each.
    soak.sim.inject_fault(drop_watches=True, path=path, duration=0.05)
    fid = soak.sim.inject_fault(drop_watches=True, path=path, duration=seconds, drop_after=after)
    _hold(seconds)
    soak.sim.remove_fault(fid)
    record.ended = time.monotonic()
    record.facts["watch_errors"] = _grown(leader, "watch_errors_total", before)
    return record


def api_pause(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    leader = _leader(soak)
    s = soak.settings
    seconds = round(s.renew_deadline_s + rng.uniform(0.5, s.lease_s), 1)
    mode = rng.choice(("error", "hang", "drop"))
    record = FaultRecord(n, "api_pause", f"pause the API ({mode}) for {seconds} s "
                         f"(renew deadline {s.renew_deadline_s:g} s)", time.monotonic(),
                         victim=leader.name, victim_was_leader=True)
    soak.sim.pause(seconds, mode)
    end = record.started + seconds
    while leader.worker_pids() and time.monotonic() < end + 2.0:
        time.sleep(0.01)
    fenced = not leader.worker_pids()
    record.facts["fenced_s"] = round(time.monotonic() - record.started, 2) if fenced else None
    _hold(max(0.0, end - time.monotonic()))
    record.ended = time.monotonic()
    return record


def partition(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    """The leader alone cut off from the API (its own user's requests hang or fail, its
    watches cut), long enough for a follower to take over: fencing must have stopped its
    workers first."""
    leader = _leader(soak)
    s = soak.settings
    seconds = round(s.lease_s + rng.uniform(1.0, 2.5), 1)
    mode = rng.choice(("hang", "error"))
    record = FaultRecord(n, "partition", f"{leader.name} cut off from the API ({mode}) for "
                         f"{seconds} s", time.monotonic(), victim=leader.name,
                         victim_was_leader=True)
    user = soak.user_of(leader)
    soak.sim.inject_fault(drop_watches=True, user=user, duration=seconds)
    if mode == "hang":
        fid = soak.sim.inject_fault(latency=seconds, user=user, duration=seconds)
    else:
        fid = soak.sim.inject_fault(status=503, user=user, duration=seconds)
    end = record.started + seconds
    while leader.worker_pids() and time.monotonic() < end:
        time.sleep(0.01)
    record.facts["fenced_s"] = (None if leader.worker_pids()
                                else round(time.monotonic() - record.started, 2))
    identity_prefix = f"{leader.name}-"
    soak.wait(lambda: soak.cluster.holder and not soak.cluster.holder.startswith(
        identity_prefix), soak.settings.recovery_s, "a follower to take the lock over")
    record.facts["takeover_s"] = round(time.monotonic() - record.started, 2)
    _hold(max(0.0, end - time.monotonic()))
    soak.sim.remove_fault(fid)
    record.ended = time.monotonic()
    return record


def intake_outage(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    status = rng.choice((503, 500, 502))
    failing, down = round(rng.uniform(1.0, 3.0), 1), round(rng.uniform(1.0, 3.0), 1)
    record = FaultRecord(n, "intake_outage", f"intake answers {status} for {failing} s, then "
                         f"refuses connections for {down} s", time.monotonic())
    soak.intake.handler = lambda _request: status
    _hold(failing)
    soak.intake.down()
    soak.intake.handler = None
    _hold(down)
    soak.intake.up()
    record.ended = time.monotonic()
    return record


def _grown(replica: Replica, key: str, before: float, timeout: float = 5.0) -> int:
    """How much an events-worker counter grew: evidence the fault reached the worker
    (heartbeats carry the counters to /health within a second or two)."""
    deadline = time.monotonic() + timeout
    while (grown := _events_stat(replica, key) - before) <= 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return max(0, int(grown))


def compaction(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    leader = _leader(soak)
    seconds = round(rng.uniform(1.0, 2.5), 1)
    record = FaultRecord(n, "compaction", f"cut event watches for {seconds} s and compact "
                         "history meanwhile (410 Gone on resume)", time.monotonic(),
                         victim=leader.name, victim_was_leader=True)
    before = _events_stat(leader, "relists_total")
    # Every event watch cut at once, now and for the whole window: the worker cannot follow,
    # so it resumes from behind the compaction and must get 410 Gone.
    fid = soak.sim.inject_fault(drop_watches=True, path="/events", duration=seconds)
    _hold(seconds / 2)
    record.facts["compacted_rv"] = soak.sim.compact()
    _hold(seconds / 2)
    soak.sim.remove_fault(fid)
    record.ended = time.monotonic()
    record.facts["relists"] = _grown(leader, "relists_total", before)
    return record


def _reloaded(soak: Soak, since: float, *, ok: bool) -> bool:
    for r in soak.fleet:
        state = r.state() if r.alive() else None
        config = (state or {}).get("config") or {}
        age = config.get("last_reload_age_s")
        if age is None or age > time.monotonic() - since or config.get("last_reload_ok") is not ok:
            return False
    return True


def sighup_valid(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    variant = rng.choice(("tags", "tags", "flush", "controlplane"))
    tag = f"chaos_reload:{n}"
    flush = round(rng.uniform(0.1, 0.4), 2)
    text = {"tags": config_yaml(tags=(tag,), flush_s=soak.settings.flush_s),
            "flush": config_yaml(flush_s=flush),
            "controlplane": config_yaml(flush_s=soak.settings.flush_s,
                                        controlplane_s=round(rng.uniform(0.5, 2.0), 1))}[variant]
    record = FaultRecord(n, "sighup_valid", f"SIGHUP with a valid datadog.yaml ({variant} "
                         "changed)", time.monotonic())
    soak.write_config(text)
    soak.config_text = text
    soak.sighup_all()
    soak.wait(lambda: _reloaded(soak, record.started, ok=True), 20, "every replica reloaded")
    record.facts["reloaded_s"] = round(time.monotonic() - record.started, 2)
    if variant == "tags":
        seen = soak.wait(lambda: soak.ledger.reload_tags.get(str(n)), 30,
                         f"events tagged {tag} at the intake")
        record.facts["tag_seen_s"] = round(seen - record.started, 2)
    record.ended = time.monotonic()
    return record


def sighup_broken(soak: Soak, rng: random.Random, n: int) -> FaultRecord:
    leader = _leader(soak)
    before = leader.worker_pids()
    variant = rng.choice(("yaml", "value"))
    text = ("tags: [unclosed\nevent_flush_interval: 0.2\n" if variant == "yaml"
            else soak.config_text.replace("event_flush_interval:", "event_flush_interval: "
                                          "soon #"))
    record = FaultRecord(n, "sighup_broken", f"SIGHUP with a broken datadog.yaml ({variant})",
                         time.monotonic(), victim=leader.name, victim_was_leader=True)
    soak.write_config(text)
    soak.sighup_all()
    soak.wait(lambda: _reloaded(soak, record.started, ok=False), 20,
              "every replica to refuse the reload")
    error = ((leader.state() or {}).get("config") or {}).get("last_reload_error", "")
    record.facts["error"] = str(error)[:120]
    record.facts["workers_kept"] = leader.worker_pids() == before
    soak.write_config(soak.config_text)  # a replica restarted later must find a valid file
    record.ended = time.monotonic()
    return record


FAULTS: dict[str, Fault] = {
    "worker_kill": worker_kill, "supervisor_kill": supervisor_kill,
    "supervisor_term": supervisor_term, "api_errors": api_errors, "watch_drop": watch_drop,
    "api_pause": api_pause, "partition": partition, "intake_outage": intake_outage,
    "compaction": compaction,
    "sighup_valid": sighup_valid, "sighup_broken": sighup_broken,
}
_DECK = (*FAULTS, "worker_kill", "supervisor_kill")


class FaultDeck:
    """Deals fault kinds: the whole deck shuffled by the seeded RNG, then again."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._cards: list[str] = []

    def deal(self) -> tuple[str, Fault]:
        if not self._cards:
            self._cards = list(_DECK)
            self.rng.shuffle(self._cards)
        kind = self._cards.pop(0)
        return kind, FAULTS[kind]
