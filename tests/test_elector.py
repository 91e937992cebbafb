"""The elector against kubesim over real HTTP: several candidates in threads of this process.

A candidate "crashes" by stopping its thread without releasing (no more renewals), which is
what the lock sees when a pod is SIGKILLed. Process-level behaviour is in test_agent_*.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson
import pytest
from kubernetes import client
from polling import wait_for

from kubesim.runner import KubeSim
from supervisor.elector import ElectionTiming, Elector
from supervisor.locks import LEADER_ANNOTATION, LeaderRecord, make_lock
from workers.kubeapi import KubeApi
from workers.settings import KubeSettings

LEASE = 2.0


@dataclass
class Candidate:
    name: str
    agent: str
    elector: Elector
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    started: list[float] = field(default_factory=list)
    stopped: list[float] = field(default_factory=list)

    @property
    def leading(self) -> bool:
        return len(self.started) > len(self.stopped)

    def crash(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def candidates(kubesim: KubeSim) -> Iterator[Callable[..., list[Candidate]]]:
    made: list[Candidate] = []

    def make(n: int, *, kind: str = "endpoints", lease: float = LEASE,
             watch: bool = True) -> list[Candidate]:
        out = []
        for i in range(len(made), len(made) + n):
            api = KubeApi.from_settings(
                KubeSettings(kubeconfig_path=sim_kubeconfig(kubesim), client_timeout_s=2),
                user_agent=f"candidate-{i}",
            )
            lock = make_lock(kind, api, namespace="default", name="datadog-leader-election",
                             identity=f"pod-{i}")
            holder: list[Candidate] = []
            elector = Elector(
                lock, ElectionTiming.from_lease(lease),
                on_started_leading=lambda h=holder: h[0].started.append(time.monotonic()),
                on_stopped_leading=lambda h=holder: h[0].stopped.append(time.monotonic()),
                watch=watch,
            )
            cand = Candidate(f"pod-{i}", f"candidate-{i}", elector)
            holder.append(cand)
            cand.thread = threading.Thread(target=elector.run, args=(cand.stop,), daemon=True)
            cand.thread.start()
            out.append(cand)
            made.append(cand)
        return out

    yield make
    for cand in made:
        cand.stop.set()
    for cand in made:
        if cand.thread is not None:
            cand.thread.join(10)


def sim_kubeconfig(sim: KubeSim) -> str:
    return sim.kubeconfig


def leaders(cands: list[Candidate]) -> list[Candidate]:
    return [c for c in cands if c.leading]


def stored_record(sim: KubeSim, kind: str = "endpoints") -> LeaderRecord:
    resource = {"endpoints": "endpoints", "configmap": "configmaps", "lease": "leases"}[kind]
    obj = sim.get(resource, "datadog-leader-election", "default")
    assert obj is not None
    if kind == "lease":
        return LeaderRecord.from_lease_spec(obj.get("spec") or {})
    return LeaderRecord.from_annotation(obj["metadata"]["annotations"][LEADER_ANNOTATION])


@pytest.mark.parametrize("kind", ["endpoints", "configmap", "lease"])
def test_exactly_one_leader_and_record_format(kubesim: KubeSim, candidates, kind: str) -> None:
    cands = candidates(3, kind=kind)
    wait_for(lambda: len(leaders(cands)) == 1, 10, "a leader")
    leader = leaders(cands)[0]
    record = stored_record(kubesim, kind)
    assert record.holder_identity == leader.name
    assert record.lease_duration_seconds == 2
    assert record.leader_transitions == 0
    assert record.acquire_time is not None
    assert record.renew_time is not None
    # Renewals keep the acquire time and move the renew time; nobody else takes over.
    first_renew = record.renew_time
    wait_for(lambda: stored_record(kubesim, kind).renew_time != first_renew, 5, "a renewal")
    again = stored_record(kubesim, kind)
    assert again.holder_identity == leader.name
    assert again.acquire_time == record.acquire_time
    assert len(leaders(cands)) == 1
    if kind != "lease":
        raw = orjson.loads(
            kubesim.get({"endpoints": "endpoints", "configmap": "configmaps"}[kind],
                        "datadog-leader-election", "default")
            ["metadata"]["annotations"][LEADER_ANNOTATION]
        )
        assert set(raw) == {"holderIdentity", "leaseDurationSeconds", "acquireTime",
                            "renewTime", "leaderTransitions"}
        assert raw["renewTime"].endswith("Z")


def test_crashed_leader_is_replaced_within_lease_plus_retry(kubesim: KubeSim, candidates) -> None:
    cands = candidates(3)
    wait_for(lambda: len(leaders(cands)) == 1, 10, "a leader")
    old = leaders(cands)[0]
    crashed_at = time.monotonic()
    old.crash()
    rest = [c for c in cands if c is not old]
    timing = ElectionTiming.from_lease(LEASE)
    # Followers wait a full lease from when they last saw the record change.
    wait_for(lambda: len(leaders(rest)) == 1, LEASE + timing.retry_period_s + 3, "a take-over")
    took = leaders(rest)[0].started[-1] - crashed_at
    assert took >= LEASE * 0.5, f"took over after {took:.2f}s: before the lease could expire"
    record = stored_record(kubesim)
    assert record.holder_identity == leaders(rest)[0].name
    assert record.leader_transitions == 1


def test_release_hands_over_within_about_one_retry_period(kubesim: KubeSim, candidates) -> None:
    cands = candidates(3, lease=4.0)
    wait_for(lambda: len(leaders(cands)) == 1, 10, "a leader")
    old = leaders(cands)[0]
    old.stop.set()
    assert old.thread is not None
    old.thread.join(10)
    released_at = time.monotonic()
    assert old.elector.release()
    rest = [c for c in cands if c is not old]
    wait_for(lambda: len(leaders(rest)) == 1, 4.0, "a take-over after release")
    took = leaders(rest)[0].started[-1] - released_at
    # Watching followers see the release at once; well under the 4 s lease.
    assert took < 1.5, f"hand-over took {took:.2f}s"
    record = stored_record(kubesim)
    assert record.leader_transitions == 1


def test_leader_fences_itself_when_the_api_server_goes_away(kubesim: KubeSim, candidates) -> None:
    (cand,) = candidates(1)
    wait_for(lambda: cand.leading, 10, "leadership")
    kubesim.stop_listening()
    went_down = time.monotonic()
    try:
        timing = ElectionTiming.from_lease(LEASE)
        wait_for(lambda: cand.stopped, timing.renew_deadline_s + timing.retry_period_s + 2,
                 "fencing")
        fenced_after = cand.stopped[-1] - went_down
        # Fencing must start before a follower could take over (a lease after last renewal).
        assert fenced_after < LEASE, f"fenced only after {fenced_after:.2f}s"
        assert not cand.elector.is_leader()
    finally:
        kubesim.resume_listening()
    # Once the API is back it campaigns again and, being alone, leads again.
    wait_for(lambda: cand.leading, 10, "re-election")


def test_leader_that_sees_another_holder_fences_at_once(kubesim: KubeSim, candidates) -> None:
    (cand,) = candidates(1, lease=4.0)
    wait_for(lambda: cand.leading, 10, "leadership")
    stolen = LeaderRecord(holder_identity="intruder", lease_duration_seconds=60,
                          leader_transitions=7)
    core = client.CoreV1Api(kubesim.api_client())
    for _ in range(20):  # the leader renews concurrently: CAS until the intruder's write lands
        obj = kubesim.get("endpoints", "datadog-leader-election", "default")
        assert obj is not None
        obj["metadata"]["annotations"][LEADER_ANNOTATION] = stolen.to_annotation()
        try:
            core.replace_namespaced_endpoints("datadog-leader-election", "default", obj)
            break
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    else:
        raise AssertionError("could not overwrite the lock")
    wait_for(lambda: cand.stopped, 4.0, "fencing on a stolen lock")
    assert stored_record(kubesim).holder_identity == "intruder"
    assert not cand.elector.is_leader()


def test_followers_cost_almost_no_requests(kubesim: KubeSim, candidates) -> None:
    cands = candidates(3)
    wait_for(lambda: len(leaders(cands)) == 1, 10, "a leader")
    kubesim.reset_counts()
    window = 4 * LEASE
    time.sleep(window)  # a measurement window, not a synchronisation
    counts = {c["userAgent"]: c for c in kubesim.counts()["clients"]}
    leader = leaders(cands)[0]
    retry = ElectionTiming.from_lease(LEASE).retry_period_s
    for cand in cands:
        agent = cand.agent
        total = counts.get(agent, {"total": 0})["total"]
        if cand is leader:
            assert total <= window / retry * 1.5 + 2
        else:
            # Polling would be window / retry = 16 requests; a watch costs ~none.
            assert total < (window / retry) / 2, f"follower {agent} made {total} requests"


def test_polling_fallback_stays_within_one_request_per_retry_period(
    kubesim: KubeSim, candidates
) -> None:
    cands = candidates(2, watch=False)
    wait_for(lambda: len(leaders(cands)) == 1, 10, "a leader")
    kubesim.reset_counts()
    window = 4 * LEASE
    time.sleep(window)  # a measurement window, not a synchronisation
    retry = ElectionTiming.from_lease(LEASE).retry_period_s
    follower = next(c for c in cands if not c.leading)
    agent = follower.agent
    counts = {c["userAgent"]: c for c in kubesim.counts()["clients"]}
    total = counts.get(agent, {"total": 0})["total"]
    assert 1 <= total <= window / (retry * 0.9) + 1


def test_a_late_watch_event_never_undoes_our_own_write(kubesim: KubeSim, candidates) -> None:
    """A watch may deliver an older record (e.g. the release we just took over) after our
    own write: it must not make a fresh leader believe it lost the lock."""
    (cand,) = candidates(1)
    wait_for(lambda: cand.leading, 10, "leadership")
    elector = cand.elector
    stale_rv = str(int(elector.lock.resource_version) - 1)
    elector._observe(LeaderRecord(holder_identity="", lease_duration_seconds=1), stale_rv)
    assert elector.is_holder()
    assert elector.is_leader()
    time.sleep(2 * ElectionTiming.from_lease(LEASE).retry_period_s)  # observe a few renewals
    assert cand.stopped == []


def test_release_while_the_election_thread_still_runs_never_wedges_it(
    kubesim: KubeSim, candidates
) -> None:
    """release() ends the term under a live election thread (e.g. one that outlived the
    agent's join while stuck in an API call): the thread must still end once stopped."""
    (cand,) = candidates(1)
    wait_for(lambda: cand.leading, 10, "leadership")
    assert cand.elector.release()
    # Not stopped, the thread notices the ended term at its next renewal and, alone,
    # campaigns and wins again; a thread waiting for a fence that never comes does not.
    wait_for(lambda: len(cand.started) == 2, 10, "a new campaign after the release")
    cand.crash()  # stop + join
