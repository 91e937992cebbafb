"""Worker processes under real supervisors: crashes, hangs, fencing, no orphans."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from agent_harness import OverlapWatch, Replica, Replicas, wait_for

from kubesim.runner import KubeSim
from supervisor.locks import LEADER_ANNOTATION, LeaderRecord

STARTUP = 20.0  # process start, fork server start and preload, on a loaded 2-core box
WORKER_ENV = {
    "DD_COLLECT_CONTROLPLANE_CHECKS": "true",
    "DD_CONTROLPLANE_CHECK_INTERVAL": "0.5",
    "DD_WORKER_HEARTBEAT_INTERVAL": "0.5",
    "DD_WORKER_RESTART_BACKOFF_MIN": "0.2",
}


def lock_record(sim: KubeSim) -> LeaderRecord:
    obj = sim.get("endpoints", "datadog-leader-election", "default")
    assert obj is not None
    return LeaderRecord.from_annotation(obj["metadata"]["annotations"][LEADER_ANNOTATION])


@pytest.fixture
def fleet(kubesim: KubeSim, tmp_path: Path) -> Iterator[Replicas]:
    with Replicas(kubesim, tmp_path, env=WORKER_ENV) as replicas:
        yield replicas


def worker_of(replica: Replica, kind: str = "controlplane") -> int:
    return wait_for(lambda: replica.worker_pids().get(kind), STARTUP, f"{kind} worker")


def worker_state(replica: Replica, kind: str = "controlplane") -> dict:
    state = replica.state() or {}
    return next((w for w in state.get("workers", []) if w["kind"] == kind), {})


def test_sigkilled_worker_is_restarted_without_touching_the_lease(
    kubesim: KubeSim, fleet: Replicas
) -> None:
    fleet.start(2)
    leader = fleet.wait_for_leader(STARTUP)
    pid = worker_of(leader)
    before = lock_record(kubesim)
    os.kill(pid, signal.SIGKILL)
    new_pid = wait_for(lambda: (p := leader.worker_pids().get("controlplane")) != pid and p,
                       10, "a new worker")
    assert new_pid != pid
    wait_for(lambda: worker_state(leader).get("restarts", 0) >= 1, 5, "restart counted")
    state = worker_state(leader)
    assert state["last_exit_code"] == -signal.SIGKILL or "SIGKILL" in state["last_exit_reason"]
    after = lock_record(kubesim)
    assert after.holder_identity == before.holder_identity
    assert after.leader_transitions == before.leader_transitions
    assert after.acquire_time == before.acquire_time
    assert fleet.leaders() == [leader]


def test_stopped_worker_is_detected_and_replaced(kubesim: KubeSim, fleet: Replicas) -> None:
    (replica,) = fleet.start(1)
    fleet.wait_for_leader(STARTUP)
    pid = worker_of(replica)
    # Stopped before its first heartbeat, a worker gets the 10 s start-up allowance instead.
    wait_for(lambda: (w := worker_state(replica)).get("pid") == pid
             and w.get("heartbeat_age_s") is not None, STARTUP, "the worker's first heartbeat")
    os.kill(pid, signal.SIGSTOP)
    try:
        # 3 missed heartbeats of 0.5 s, then a kill and a restart after the 0.2 s backoff.
        new_pid = wait_for(
            lambda: (p := replica.worker_pids().get("controlplane")) != pid and p, 10,
            "replacement of the stopped worker",
        )
        assert new_pid != pid
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert "heartbeat" in worker_state(replica).get("last_exit_reason", "")
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)


def test_sigkilled_supervisor_leaves_no_worker_behind(kubesim: KubeSim, fleet: Replicas) -> None:
    (replica,) = fleet.start(1)
    fleet.wait_for_leader(STARTUP)
    worker_of(replica)
    tree = [p.pid for p in psutil.Process(replica.pid).children(recursive=True)]
    assert tree
    replica.kill()

    def all_gone() -> bool:
        return not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            for pid in tree
        )

    wait_for(all_gone, 10, "every process of the pod to exit")


@pytest.mark.parametrize("fault", ["stopped", "errors", "dropped"])
def test_leader_fences_itself_and_never_two_run_workers(
    kubesim: KubeSim, fleet: Replicas, fault: str
) -> None:
    fleet.start(3, env={"DD_LEADER_LEASE_DURATION": "3"})
    leader = fleet.wait_for_leader(STARTUP)
    worker_of(leader)
    with OverlapWatch(fleet) as watch:
        if fault == "stopped":
            # The whole API server away for longer than the renew deadline (1.5 s).
            kubesim.stop_listening()
            wait_for(lambda: not leader.worker_pids(), 6, "the leader to fence its workers")
            kubesim.resume_listening()
        elif fault == "errors":
            # Every request on the lock answered 500 for 5 s: the leader cannot renew and
            # must fence; someone leads again once the lease has expired after the fault.
            fid = kubesim.inject_fault(status=500, path="datadog-leader-election", duration=5)
            wait_for(lambda: not leader.worker_pids(), 6, "the leader to fence its workers")
            kubesim.remove_fault(fid)
        else:
            # Every connection dropped without an answer for 4 s.
            kubesim.pause(4, mode="drop")
            wait_for(lambda: not leader.worker_pids(), 6, "the leader to fence its workers")
        new = fleet.wait_for_leader(STARTUP)
        worker_of(new)
        time.sleep(1)  # keep sampling a little after the take-over
    assert watch.samples > 100
    assert watch.overlaps == [], f"two replicas ran workers at once: {watch.overlaps[:3]}"
