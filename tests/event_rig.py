"""Helpers for the events worker tests and bench: events with markers, a job in a thread.

    job = JobRunner(sim, intake, settings=EventSettings(...), token=None).start()
    sim.create_many("events", [event(i) for i in range(100)], "default")
    wait_for(lambda: len(delivered(intake)) == 100)
    assert job.stop() < 2.0                  # seconds the job took to return
    job.tokens                               # Progress tokens, in order

Every test event carries a unique marker ``mk<id>-<count>`` in its message, so what the
intake received can be counted per occurrence (lost: missing; duplicated: seen twice).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from multiprocessing import Pipe
from typing import Any

from intake_server import LocalIntake

from kubesim.runner import KubeSim
from workers.backoff import Backoff
from workers.events import EventJob
from workers.intake import IntakeClient
from workers.kubeapi import KubeApi
from workers.loop import WorkerContext, _Channel
from workers.protocol import Heartbeat, Progress, Token
from workers.settings import EventSettings, IntakeSettings, KubeSettings, WorkerSettings

FAST = Backoff(base_s=0.05, factor=2.0, cap_s=0.4, jitter=0.0)
API_KEY = "0123456789abcdef0123456789abcdef"
_DRAINED = -1.0
MARKER = re.compile(r"mk(\d+)-(\d+)")


def rfc3339(epoch: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def event(i: int, *, ns: str = "default", count: int = 1, reason: str = "Started",
          kind: str = "Pod", component: str = "kubelet", seen: float | None = None,
          type_: str = "Normal", pad: int = 0) -> dict[str, Any]:
    """A core/v1 Event about its own Pod ``app-<i>``; its message carries ``mk<i>-<count>``."""
    ts = rfc3339(seen)
    return {
        "metadata": {"name": f"app-{i}.{i:016x}", "namespace": ns},
        "involvedObject": {"kind": kind, "namespace": ns, "name": f"app-{i}",
                           "uid": f"uid-obj-{i}", "apiVersion": "v1"},
        "reason": reason,
        "message": f"Started container app mk{i}-{count}" + (" " + "x" * pad if pad else ""),
        "source": {"component": component, "host": f"node-{i % 7}"},
        "firstTimestamp": ts, "lastTimestamp": ts, "count": count, "type": type_,
    }


def occurrences(intake: LocalIntake) -> Counter[tuple[int, int]]:
    """(event id, count) -> how many times the intake acknowledged that occurrence."""
    found: Counter[tuple[int, int]] = Counter()
    for e in intake.events():
        for i, n in MARKER.findall(e.get("msg_text", "")):
            found[(int(i), int(n))] += 1
    return found


def check_once(found: Counter[tuple[int, int]], expected: Iterable[tuple[int, int]]
               ) -> tuple[set[tuple[int, int]], dict[tuple[int, int], int]]:
    """(lost occurrences, repeated ones with their extra copies)."""
    expected = set(expected)
    lost = expected - set(found)
    repeated = {k: n - 1 for k, n in found.items() if n > 1}
    return lost, repeated


def kube_api(sim: KubeSim) -> KubeApi:
    return KubeApi.from_settings(KubeSettings(kubeconfig_path=sim.kubeconfig),
                                 user_agent="event-tests")


def repeat(api: KubeApi, ns: str, name: str, count: int) -> dict[str, Any]:
    """Write the event again with ``count`` (a new occurrence), as the kubelet does."""
    path = f"/api/v1/namespaces/{ns}/events/{name}"
    obj = api.get(path)
    i = int(obj["involvedObject"]["name"].split("-")[1])
    obj["count"] = count
    obj["message"] = MARKER.sub(f"mk{i}-{count}", obj["message"])
    obj["lastTimestamp"] = rfc3339()
    return api.replace(path, obj)


class JobRunner:
    """An ``EventJob`` in a thread with a real ``WorkerContext`` over a real Pipe."""

    def __init__(
        self,
        sim: KubeSim,
        intake: LocalIntake | None,
        *,
        settings: EventSettings | None = None,
        token: Token | None = None,
        intake_settings: IntakeSettings | None = None,
        forbidden_pause_s: float = 0.3,
    ) -> None:
        events = settings or EventSettings(flush_interval_s=0.1, watch_timeout_s=30)
        if intake_settings is None:
            assert intake is not None
            intake_settings = IntakeSettings(api_key=API_KEY, dd_url=intake.url,
                                             hostname="agent-0")
        self.settings = WorkerSettings(kube=KubeSettings(kubeconfig_path=sim.kubeconfig),
                                       intake=intake_settings, events=events)
        self.conn, worker_end = Pipe()
        self.ctx = WorkerContext(name="events", settings=self.settings, token=token,
                                 channel=_Channel(worker_end))
        self.client = IntakeClient(intake_settings, backoff=FAST,
                                   forbidden_pause_s=forbidden_pause_s,
                                   max_items=events.batch_max_events,
                                   max_bytes=events.batch_max_bytes)
        self.tokens: list[Token] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="job", daemon=True)
        self._reader = threading.Thread(target=self._read, name="pipe", daemon=True)
        self._lock = threading.Lock()
        self._drained = threading.Event()

    def start(self) -> JobRunner:
        self._reader.start()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            EventJob(self.ctx, intake=self.client, watch_backoff=FAST).run()
        except BaseException as exc:
            self.error = exc

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return
            if isinstance(message, Progress):
                with self._lock:
                    self.tokens.append(message.token)
            elif isinstance(message, Heartbeat) and message.at == _DRAINED:
                self._drained.set()

    @property
    def token(self) -> Token | None:
        with self._lock:
            return self.tokens[-1] if self.tokens else None

    def heartbeat(self) -> Heartbeat:
        return self.ctx._heartbeat()

    def stats(self) -> dict[str, float]:
        """Counters and gauges of the job's heartbeat, in one dict."""
        beat = self.heartbeat()
        return {**beat.stats, **beat.gauges}

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> float:
        """Set ``stopping``; return how long the job took to return."""
        t0 = time.monotonic()
        self.ctx.stopping.set()
        self._thread.join(timeout)
        elapsed = time.monotonic() - t0
        assert not self._thread.is_alive(), "the job did not return"
        # Everything the job sent is read once this marker, sent after it, comes through.
        self.ctx._channel.send(Heartbeat(at=_DRAINED))
        assert self._drained.wait(5.0), "the pipe reader did not drain"
        if self.error is not None:
            raise self.error
        return elapsed
