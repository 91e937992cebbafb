"""The events worker as a real process under the supervisor's WorkerPool: SIGKILL mid-stream."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from event_rig import API_KEY, check_once, event, occurrences
from intake_server import LocalIntake
from polling import wait_for
from token_keeper import Checkpointer

from supervisor.lifecycle import WorkerPool
from workers.backoff import Backoff
from workers.settings import EventSettings, IntakeSettings, KubeSettings, WorkerSettings

BATCH = 100
TOTAL = 3000


def running(pool: WorkerPool, not_pid: int | None = None):
    w = next(w for w in pool.snapshot() if w.kind == "events")
    return w if w.state == "running" and w.pid is not None and w.pid != not_pid else None


@pytest.fixture
def intake():
    with LocalIntake() as server:
        yield server


def test_sigkill_mid_stream_loses_nothing_and_repeats_at_most_one_batch(kubesim, intake):
    checkpointer = Checkpointer()
    pool = WorkerPool(token_source=checkpointer.token_source,
                      on_progress=checkpointer.on_progress,
                      backoff=Backoff(base_s=0.1, factor=2.0, cap_s=1.0, jitter=0.0),
                      sample_interval_s=0.2, release_forkserver=False)
    settings = WorkerSettings(
        heartbeat_interval_s=0.25,
        kube=KubeSettings(kubeconfig_path=kubesim.kubeconfig),
        intake=IntakeSettings(api_key=API_KEY, dd_url=intake.url, hostname="agent-0"),
        events=EventSettings(flush_interval_s=0.1, batch_max_events=BATCH),
    )
    stop = threading.Event()

    def produce() -> None:
        for start in range(0, TOTAL, 30):
            kubesim.create_many("events", [event(i) for i in range(start, start + 30)],
                                "default")
            if stop.wait(0.01):
                return

    # A slow intake while the worker is killed: its payload in flight is acknowledged
    # (202) after the worker died, so the restarted worker sends that batch again.
    armed, in_flight = threading.Event(), threading.Event()

    def slow_when_armed(request) -> int:
        if armed.is_set():
            in_flight.set()
            time.sleep(0.3)  # the intake taking its time: the worker dies meanwhile
        return 202

    intake.handler = slow_when_armed
    producer = threading.Thread(target=produce, daemon=True)
    try:
        pool.start(settings, ["events"])
        first = wait_for(lambda: running(pool), 30, "the events worker running")
        wait_for(lambda: checkpointer.token, 30, "the start token")
        producer.start()
        wait_for(lambda: len(occurrences(intake)) >= TOTAL // 3, 30, "a third delivered")
        armed.set()
        wait_for(in_flight.is_set, 30, "a payload in flight")
        os.kill(first.pid, signal.SIGKILL)
        armed.clear()
        second = wait_for(lambda: running(pool, not_pid=first.pid), 30, "a restarted worker")
        assert second.restarts == 1
        producer.join(60)
        expected = {(i, 1) for i in range(TOTAL)}
        wait_for(lambda: expected <= set(occurrences(intake)), 60, "every event delivered")
        resumed_from = checkpointer.handed_out[-1]
        assert resumed_from is not None  # the restart resumed from an acknowledged token
    finally:
        stop.set()
        t0 = time.monotonic()
        pool.close(grace_s=3.0)
        closed_in = time.monotonic() - t0
    found = occurrences(intake)
    lost, repeated = check_once(found, expected)
    repeats = sum(repeated.values())
    print(f"SIGKILL mid-stream: {TOTAL} events, lost {len(lost)}, repeated {repeats} "
          f"(batch {BATCH})")
    assert lost == set()
    assert set(found) == expected
    assert 1 <= repeats <= BATCH  # exactly the batch in flight, acknowledged too late
    assert closed_in < 3.0
