"""The soak's steady stream of Kubernetes events, each occurrence with a unique marker.

    stream = EventStream(sim, ledger, rng=random.Random(seed), rate=40.0).start()
    ...
    stream.stop()

New events are written with ``count`` 1 and the marker ``ck<id>-1`` in their message; a
repeat rewrites the same Event object with ``count`` + 1 and marker ``ck<id>-<count>``, as
the kubelet does. A repeat is only written once the previous occurrence of that event was
acknowledged by the intake: Kubernetes coalesces occurrences (a re-list after a 410 shows
only the latest count), so this is what makes every single occurrence observable and the
"lost = 0" check exact rather than heuristic.

The writes go straight into kubesim's store (like a kubelet on another network path), so
they keep coming while the agent's API connection is faulted, paused or dropped: the agent
must catch up on all of them.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

from ledger import Ledger

from kubesim.registry import prepare_create, prepare_update
from kubesim.resources import find
from kubesim.runner import KubeSim
from kubesim.store import object_key

__all__ = ["EventStream", "marker"]

NAMESPACE = "default"
REASONS = (("Scheduled", "Normal"), ("Pulled", "Normal"), ("Created", "Normal"),
           ("Started", "Normal"), ("BackOff", "Warning"), ("Unhealthy", "Warning"))
EVENTS_PER_OBJECT = 4
"""Several events share an involved object, so the agent's per-object bundles carry
several lines (and several markers) in one Datadog event."""
MAX_COUNT = 6
TICK_S = 0.1


def marker(eid: int, count: int) -> str:
    return f"ck{eid}-{count}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_event(eid: int, reason: str, type_: str) -> dict[str, Any]:
    pod = f"app-{eid // EVENTS_PER_OBJECT}"
    ts = _now()
    return {
        "metadata": {"name": f"{pod}.{eid:016x}", "namespace": NAMESPACE},
        "involvedObject": {"kind": "Pod", "namespace": NAMESPACE, "name": pod,
                           "uid": f"uid-{pod}", "apiVersion": "v1"},
        "reason": reason, "type": type_,
        "message": f"{reason} for chaos {marker(eid, 1)}",
        "source": {"component": "kubelet", "host": f"node-{eid % 5}"},
        "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
    }


class EventStream:
    """A producer thread: about ``rate`` new events a second plus repeats of acked ones."""

    def __init__(self, sim: KubeSim, ledger: Ledger, *, rng: random.Random, rate: float,
                 repeat_share: float = 0.25) -> None:
        self.sim = sim
        self.ledger = ledger
        self.rng = rng
        self.rate = rate
        self.repeat_share = repeat_share
        self.written_new = 0
        self.written_repeats = 0
        self._next_id = 0
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-stream", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> EventStream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        per_tick = self.rate * TICK_S
        due = time.monotonic()
        carry = 0.0
        try:
            while not self._stop.is_set():
                carry += per_tick
                n, carry = int(carry), carry - int(carry)
                repeats = sum(self.rng.random() < self.repeat_share for _ in range(n))
                self._write_new(n - repeats)
                self._write_repeats(repeats)
                # Pace by the clock, not by the work: a slow tick is followed by a short one.
                due += TICK_S
                self._stop.wait(max(0.0, due - time.monotonic()))
        except BaseException as exc:  # surfaced by stop(): a broken stream must fail the test
            self.error = exc

    def _write_new(self, n: int) -> None:
        if n <= 0:
            return
        objs = []
        for _ in range(n):
            eid, self._next_id = self._next_id, self._next_id + 1
            reason, type_ = self.rng.choice(REASONS)
            objs.append((eid, new_event(eid, reason, type_)))
        res = find("events")

        for eid, obj in objs:
            self._names[eid] = obj["metadata"]["name"]

        def put() -> list[int]:
            rvs = []
            for _eid, obj in objs:
                prepared = prepare_create(res, obj, NAMESPACE)  # consumes obj
                key = object_key(NAMESPACE, prepared["metadata"]["name"])
                rvs.append(self.sim.store.put(res.bucket, key, prepared).rv)
            return rvs

        rvs = self.sim.call(put)
        at = time.monotonic()
        for (eid, _obj), rv in zip(objs, rvs, strict=True):
            self.ledger.written(eid, 1, rv, at)
        self.written_new += n

    def _write_repeats(self, n: int) -> None:
        candidates = self.ledger.repeatable(MAX_COUNT)
        if n <= 0 or not candidates:
            return
        res = find("events")
        for eid, count in self.rng.sample(candidates, min(n, len(candidates))):
            key = object_key(NAMESPACE, self._names[eid])

            def put(key: str = key, eid: int = eid, count: int = count) -> int:
                old = self.sim.store.get(res.bucket, key)
                assert old is not None, f"event {key} vanished from the store"
                obj = old.copy()
                obj["count"] = count + 1
                obj["message"] = obj["message"].replace(marker(eid, count),
                                                        marker(eid, count + 1))
                obj["lastTimestamp"] = _now()
                prepared = prepare_update(res, obj, old.obj, obj["metadata"]["name"])
                return self.sim.store.put(res.bucket, key, prepared).rv

            rv = self.sim.call(put)
            self.ledger.written(eid, count + 1, rv, time.monotonic())
            self.written_repeats += 1
