"""The soak's checkers must be able to fail: each is shown a violation here (fast, no agent).

- the ledger counts lost, duplicated and phantom occurrences from what a real intake got,
  and catches a token that passed an unacknowledged occurrence;
- the process watcher (a real process sampling real processes) sees two "replicas" running
  workers at once, and a worker that outlives its supervisor;
- the lease checks flag a worker alive past its replica's lease, and while another replica
  holds the lock.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import psutil
import pytest
from intake_server import LocalIntake
from leasecheck import lock_overlaps, outlived_leases
from ledger import Ledger
from watchers import ProcessWatch, WorkerRun

# A stand-in for a replica: a process whose command line says "supervisor run", with one
# child named "events" (as the agent's workers name themselves) that ignores its parent's
# death, unlike the real workers (PR_SET_PDEATHSIG).
FAKE_POD = """
import ctypes, subprocess, sys, time
child = '''
import ctypes, time
ctypes.CDLL(None).prctl(15, b"events", 0, 0, 0)
time.sleep(60)
'''
subprocess.Popen([sys.executable, "-c", child])
time.sleep(60)
"""


def post(intake: LocalIntake, texts: list[str], sender: str = "replica-0") -> None:
    body = json.dumps({"events": {"kubernetes": [{"msg_text": t} for t in texts]},
                       "internalHostname": sender}).encode()
    request = urllib.request.Request(f"{intake.url}/intake/", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202


def test_ledger_counts_lost_duplicated_and_phantom_occurrences() -> None:
    with LocalIntake() as intake:
        ledger = Ledger(intake)
        for eid in range(4):
            ledger.written(eid, 1, 100 + eid, time.monotonic())
        ledger.written(0, 2, 104, time.monotonic())
        post(intake, ["1 **Started**: a ck0-1\n2 **Started**: b ck0-2", "ck1-1"])
        post(intake, ["ck1-1 again", "ck9-1 never written"], sender="replica-1")
        intake.respond(503)
        post_failed = pytest.raises(urllib.error.HTTPError)
        with post_failed:
            post(intake, ["ck2-1 answered 503: not acknowledged"])
        ledger.refresh()
        ledger.check_commit(102, time.monotonic())  # ck2-1 (rv 102) was never acknowledged
    assert [(o.eid, o.count) for o in ledger.lost()] == [(2, 1), (3, 1)]
    assert [(o.key, c.sender) for o, c in ledger.extra_copies()] == [((1, 1), "replica-1")]
    assert dict(ledger.phantoms) == {(9, 1): 1}
    assert [v["occurrence"] for v in ledger.commit_violations] == ["ck2-1"]
    assert ledger.senders == {"replica-0": 1, "replica-1": 1}


@pytest.fixture
def fake_pods() -> Iterator[tuple[list[subprocess.Popen[bytes]], Callable[[], None]]]:
    """(pods to start, remember their trees); every process of them is killed after."""
    pods: list[subprocess.Popen[bytes]] = []
    children: list[psutil.Process] = []

    def remember() -> None:
        for pod in pods:
            with contextlib.suppress(psutil.Error):
                children.extend(psutil.Process(pod.pid).children(recursive=True))

    yield pods, remember
    remember()
    for proc in [*children, *(psutil.Process(p.pid) for p in pods if p.poll() is None)]:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    for pod in pods:
        pod.wait(5)


def test_process_watch_sees_an_overlap_and_an_orphan(fake_pods) -> None:
    pods, remember = fake_pods
    watch = ProcessWatch(interval=0.01).start()
    try:
        for name in ("fake-0", "fake-1"):
            pods.append(subprocess.Popen([sys.executable, "-c", FAKE_POD, "supervisor", "run"],
                                         env={"DD_POD_NAME": name, "PATH": "/usr/bin:/bin"}))
        time.sleep(1.5)  # both "workers" started, named and sampled for a while
        remember()
        pods[0].send_signal(signal.SIGKILL)
        pods[0].wait(5)
        time.sleep(5.0)  # well past the watcher's 3 s orphan grace, even on a loaded box
    finally:
        watch.stop()
    assert watch.error == ""
    assert watch.overlap_count > 10
    assert frozenset({"fake-0", "fake-1"}) in {frozenset(o) for o in watch.overlaps}
    assert [(o["name"], o["replica"]) for o in watch.orphans] == [("events", "fake-0")]
    assert {r.replica for r in watch.worker_runs if r.name == "events"} == {"fake-0", "fake-1"}
    assert watch.gap_ms["p50"] <= 20.0


def test_lease_checks_flag_a_worker_past_its_lease_and_under_another_holder() -> None:
    writes = [(10.0, "replica-0-aaaaaa", 3), (10.8, "replica-0-aaaaaa", 3),
              (13.9, "replica-1-bbbbbb", 3), (14.6, "replica-1-bbbbbb", 3)]
    runs = [
        WorkerRun("replica-0", "events", 100, first_seen=10.1, last_seen=12.5),  # fine
        WorkerRun("replica-0", "events", 101, first_seen=12.6, last_seen=14.0),  # too long
        WorkerRun("replica-1", "events", 102, first_seen=14.2, last_seen=15.0),  # fine
        WorkerRun("replica-2", "controlplane", 103, first_seen=1.0, last_seen=2.0),  # no lock
    ]
    outlived = outlived_leases(writes, runs)
    assert [(o["worker"], o.get("beyond_lease_s")) for o in outlived] == [
        ("replica-0/events pid 101", 0.2), ("replica-2/controlplane pid 103", None)]
    assert lock_overlaps(writes, runs) == [
        {"worker": "replica-0/events pid 101", "lock_written_by": "replica-1-bbbbbb",
         "at_s": 13.9}]
