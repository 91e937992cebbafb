"""Minimal reproductions of what the chaos soak found in the agent (see each test's text).

Each runs real processes or a real elector against kubesim (and a local intake), in a few
seconds. Each failed before its fix and guards against the finding coming back.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from agent_harness import Replica, Replicas, wait_for
from event_rig import API_KEY, check_once, event, occurrences
from intake_server import LocalIntake

from kubesim.resources import find
from kubesim.runner import KubeSim
from supervisor.checkpoint import TOKEN_CONFIGMAP, TOKEN_KEY
from supervisor.elector import ElectionTiming, Elector
from supervisor.locks import LEADER_ANNOTATION, LeaderRecord, make_lock
from workers.kubeapi import KubeApi
from workers.settings import KubeSettings

STARTUP = 30.0


@pytest.fixture
def intake() -> Iterator[LocalIntake]:
    with LocalIntake() as server:
        yield server


@pytest.fixture
def fleet(kubesim: KubeSim, intake: LocalIntake, tmp_path: Path) -> Iterator[Replicas]:
    env = {
        "DD_API_KEY": API_KEY, "DD_DD_URL": intake.url, "DD_COLLECT_KUBERNETES_EVENTS": "true",
        "DD_LEADER_LEASE_DURATION": "3", "DD_WORKER_HEARTBEAT_INTERVAL": "0.5",
        "DD_EVENT_FLUSH_INTERVAL": "0.2", "DD_LOG_LEVEL": "info",
        # Nothing is persisted during the test: what the ConfigMap says stays the seed.
        "DD_TOKEN_CHECKPOINT_INTERVAL": "120",
    }
    with Replicas(kubesim, tmp_path, env=env) as replicas:
        yield replicas


def events_worker(replica: Replica) -> int:
    return wait_for(lambda: replica.worker_pids().get("events"), STARTUP, "the events worker")


def test_a_leader_that_wins_again_after_fencing_resumes_from_its_own_token(
    kubesim: KubeSim, intake: LocalIntake, fleet: Replicas
) -> None:
    seed = kubesim.create("configmaps", {"metadata": {"name": "token-seed"}}, "default")
    seed_rv = seed["metadata"]["resourceVersion"]
    kubesim.create("configmaps", {"metadata": {"name": TOKEN_CONFIGMAP},
                                  "data": {TOKEN_KEY: seed_rv}}, "default")
    (replica,) = fleet.start(1)
    first = events_worker(replica)
    kubesim.create_many("events", [event(i) for i in range(100)], "default")
    wait_for(lambda: len(occurrences(intake)) >= 100, STARTUP, "100 events delivered")
    state = replica.state() or {}
    assert int(state["token"]["key"]) > int(seed_rv)  # acknowledged progress, in memory
    # The API away for longer than the renew deadline (1.5 s): the leader fences itself,
    # then, alone, takes the lock again.
    kubesim.pause(3.0)
    wait_for(lambda: not replica.worker_pids(), 10, "the leader to fence its workers")
    second = events_worker(replica)
    assert second != first
    assert kubesim.get("configmaps", TOKEN_CONFIGMAP, "default")["data"][TOKEN_KEY] == seed_rv
    kubesim.create_many("events", [event(i) for i in range(100, 110)], "default")
    wait_for(lambda: len(occurrences(intake)) >= 110, STARTUP, "10 more events delivered")
    lost, repeated = check_once(occurrences(intake), {(i, 1) for i in range(110)})
    assert lost == set()
    assert sum(repeated.values()) == 0, (
        f"{sum(repeated.values())} occurrences delivered twice after the same replica "
        f"re-won the lock: it resumed from the ConfigMap's token {seed_rv}, not from its "
        f"own {state['token']['key']}")


def lock_writes(sim: KubeSim) -> list[tuple[float, str]]:
    """(monotonic time, holder) of every write of the lock, recorded by the store itself."""
    writes: list[tuple[float, str]] = []
    bucket = find("endpoints").bucket

    def hook(name: str, stored: Any) -> None:
        if name == bucket and stored.key == "default/datadog-leader-election":
            text = stored.obj["metadata"].get("annotations", {}).get(LEADER_ANNOTATION, "")
            writes.append((time.monotonic(), LeaderRecord.from_annotation(text).holder_identity))

    sim.call(sim.store.on_write.append, hook)
    return writes


def fencing_logged_at(replica: Replica) -> float | None:
    """Monotonic time of the supervisor's "fencing" log line (logs carry UTC wall time)."""
    found = re.search(r"^(\S+)Z .*fencing \(stopping workers\)", replica.logs(), re.MULTILINE)
    if found is None:
        return None
    wall = datetime.fromisoformat(found.group(1) + "+00:00").timestamp()
    return wall - (time.time() - time.monotonic())


def test_fencing_on_a_hanging_api_stops_the_workers_within_three_quarters_of_the_lease(
    kubesim: KubeSim, fleet: Replicas
) -> None:
    writes = lock_writes(kubesim)
    (replica,) = fleet.start(1)
    events_worker(replica)
    wait_for(lambda: len(writes) >= 4, STARTUP, "a few renewals")
    paused_at = time.monotonic()
    kubesim.pause(6.0, mode="hang")  # requests stall until the pause ends
    wait_for(lambda: not replica.worker_pids(), 10, "the leader to fence its workers", 0.005)
    gone_at = time.monotonic()
    last_renewal = max(t for t, _ in writes if t <= paused_at)
    fenced = fencing_logged_at(replica)
    lease, deadline, grace = 3.0, 1.5, 0.75  # DD_LEADER_LEASE_DURATION=3: lease/2, lease/4
    measured = (f"after the last renewal: fencing logged at "
                f"{fenced - last_renewal if fenced else float('nan'):.2f} s (deadline "
                f"{deadline} s), workers gone at {gone_at - last_renewal:.2f} s (lease {lease} s)")
    print(measured)
    assert gone_at - last_renewal <= deadline + grace + 0.3, measured


class LateWatchLock:
    """The real lock, but its watch hands over the first event it reads only when
    ``release`` is set: a watch event delayed in flight, as under a loaded node."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self.release = threading.Event()
        self.handed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lock, name)

    def watch(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        events = self._lock.watch(*args, **kwargs)
        first = next(events)  # read now: the previous leader's record
        self.release.wait(10)
        try:
            yield first
        finally:
            self.handed.set()  # the watch loop is done with it
        yield from events


def test_a_late_lock_watch_event_does_not_unseat_the_new_leader(kubesim: KubeSim) -> None:
    """Found by the soak (a new leader that never started its workers: its lock watch
    handed over the previous leader's record after the take-over, is_leader() turned false
    and the agent dropped the start); fixed in the elector by comparing resourceVersions.
    This drives the real watch loop with a delayed event, so it guards that fix."""
    now = datetime.now(UTC)
    previous = LeaderRecord(holder_identity="pod-old", lease_duration_seconds=1,
                            acquire_time=now, renew_time=now, leader_transitions=3)
    kubesim.create("endpoints", {"metadata": {"name": "datadog-leader-election", "annotations": {
        LEADER_ANNOTATION: previous.to_annotation()}}}, "default")
    api = KubeApi.from_settings(KubeSettings(kubeconfig_path=kubesim.kubeconfig,
                                             client_timeout_s=2), user_agent="finding")
    lock = LateWatchLock(make_lock("endpoints", api, namespace="default",
                                   name="datadog-leader-election", identity="pod-new"))
    seen: list[bool] = []
    stop = threading.Event()

    def started() -> None:
        lock.release.set()  # the delayed event arrives just after the take-over
        assert lock.handed.wait(5)
        seen.append(elector.is_leader())

    elector = Elector(lock, ElectionTiming.from_lease(2.0), on_started_leading=started,
                      on_stopped_leading=lambda: None)
    thread = threading.Thread(target=elector.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: seen, 15, "the elector to lead")
    finally:
        stop.set()
        lock.release.set()
        thread.join(10)
    record = LeaderRecord.from_annotation(kubesim.get(
        "endpoints", "datadog-leader-election", "default")["metadata"]["annotations"][
        LEADER_ANNOTATION])
    assert record.holder_identity == "pod-new"  # it holds the lock...
    assert seen == [True], "...yet is_leader() is false right after it became leader"
