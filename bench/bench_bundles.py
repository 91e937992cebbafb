"""Events/s through the Datadog side of the pipeline, by hand: ``python bench/bench_bundles.py``.

100,000 realistic core/v1 Events of about 1.2 KB JSON each (managedFields included), in
flushes of 500 as the events worker batches them; stages measured cumulatively:
decode (orjson.loads, for scale) -> collected_event_types filter -> transform (bundled or
unbundled) -> JSON payloads (<= 500 events / 2 MiB, encoded as the intake client does:
one orjson call for a batch that fits one payload) -> zlib. No network. "decode" includes
freeing the decoded dicts; the cyclic GC runs as configured (``--no-gc`` to switch it off).
``--grouped`` orders the events as bench_events.py writes them (namespace by namespace),
so that an object has several events in a flush and bundles are bigger.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import zlib

import orjson

from workers import payloads
from workers.bundles import is_collected, transform
from workers.settings import EventTypeSelector

REASONS = [
    ("Normal", "Scheduled", "default-scheduler", "Successfully assigned {ns}/{pod} to {node}"),
    ("Normal", "Pulling", "kubelet", 'Pulling image "registry.example.com/team/app:1.{i}"'),
    ("Normal", "Pulled", "kubelet", 'Successfully pulled image "registry.example.com/app" in 1.2s'),
    ("Normal", "Created", "kubelet", "Created container app"),
    ("Normal", "Started", "kubelet", "Started container app"),
    ("Warning", "BackOff", "kubelet", "Back-off restarting failed container app in pod {pod}"),
    ("Warning", "Unhealthy", "kubelet", "Readiness probe failed: HTTP probe failed with 503"),
]


def make_events(n: int, objects: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        obj = rng.randrange(objects)
        ns, pod, node = f"team-{obj % 40}", f"app-{obj:06d}-7c5ddbdf54-x2x9k", f"node-{obj % 300}"
        typ, reason, component, template = REASONS[rng.randrange(len(REASONS))]
        message = template.format(ns=ns, pod=pod, node=node, i=i) + f" marker-{i:07d}"
        ts = f"2024-05-01T10:{(i // 60) % 60:02d}:{i % 60:02d}Z"
        event = {
            "kind": "Event", "apiVersion": "v1",
            "metadata": {
                "name": f"{pod}.17a{i:013x}", "namespace": ns,
                "uid": f"4b0a1c55-2d7e-4a8e-{i:04x}-1f1e2b7d9c01",
                "resourceVersion": str(100000 + i), "creationTimestamp": ts,
                "managedFields": [{
                    "manager": component, "operation": "Update", "apiVersion": "v1",
                    "time": ts, "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:count": {}, "f:firstTimestamp": {}, "f:involvedObject": {},
                                 "f:lastTimestamp": {}, "f:message": {}, "f:reason": {},
                                 "f:reportingComponent": {}, "f:reportingInstance": {},
                                 "f:source": {"f:component": {}, "f:host": {}}, "f:type": {}},
                }],
            },
            "involvedObject": {
                "kind": "Pod", "namespace": ns, "name": pod,
                "uid": f"e6417a7f-f566-11e7-{obj:04x}-0e4863e1cbf4", "apiVersion": "v1",
                "resourceVersion": str(90000 + obj), "fieldPath": "spec.containers{app}",
            },
            "reason": reason, "message": message,
            "source": {"component": component, "host": node},
            "firstTimestamp": ts, "lastTimestamp": ts, "count": 1 + i % 3, "type": typ,
            "eventTime": None, "reportingComponent": component, "reportingInstance": node,
        }
        out.append(orjson.dumps(event))
    return out


def run(raw: list[bytes], *, unbundle: bool, level: int, flush: int) -> dict[str, float]:
    selectors = (EventTypeSelector(kind="Pod"), EventTypeSelector(source="kubelet"),
                 EventTypeSelector(kind="Node", reasons=("NodeNotReady",)))
    t = {"decode": 0.0, "filter": 0.0, "transform": 0.0, "encode": 0.0, "zlib": 0.0}
    dd_events = raw_bytes = zbytes = 0
    for start in range(0, len(raw), flush):
        t0 = time.perf_counter()
        dicts = [orjson.loads(b) for b in raw[start:start + flush]]
        t1 = time.perf_counter()
        kept = [d for d in dicts if is_collected(d, selectors)]
        t2 = time.perf_counter()
        out = transform(kept, unbundle=unbundle, tags=("env:bench",), hostname="agent-0")
        t3 = time.perf_counter()
        bodies = _bodies(out.events)
        t4 = time.perf_counter()
        compressed = [zlib.compress(b, level) for b in bodies]
        t5 = time.perf_counter()
        dd_events += len(out.events)
        raw_bytes += sum(map(len, bodies))
        zbytes += sum(map(len, compressed))
        t6 = time.perf_counter()
        del dicts, kept, out, bodies, compressed  # freeing the dicts is part of decoding
        t7 = time.perf_counter()
        for key, a, b in (("decode", t0, t1), ("filter", t1, t2), ("transform", t2, t3),
                          ("encode", t3, t4), ("zlib", t4, t5), ("decode", t6, t7)):
            t[key] += b - a
    return {**t, "dd_events": dd_events, "raw": raw_bytes, "z": zbytes}


def _bodies(events: list[dict[str, object]]) -> list[bytes]:
    """The intake client's payloads for a batch (IntakeClient.deliver_events)."""
    whole = payloads.whole_events_payload(events, "agent-0", payloads.MAX_PAYLOAD_ITEMS,
                                          payloads.MAX_PAYLOAD_BYTES)
    if whole is not None:
        return [whole]
    return [payloads.events_payload(b, "agent-0")
            for b in payloads.batches(payloads.encode_events(events))]


def best_of(repeat: int, raw: list[bytes], **kwargs: object) -> dict[str, float]:
    """Per-stage minimum over runs: the machine is shared, the minimum is the signal."""
    runs = [run(raw, **kwargs) for _ in range(repeat)]
    return {k: min(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--objects", type=int, default=5_000, help="distinct involved objects")
    parser.add_argument("--flush", type=int, default=500, help="Kubernetes events per flush")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-gc", action="store_true", help="gc.disable() while measuring")
    parser.add_argument("--grouped", action="store_true",
                        help="events in namespace order, as bench_events.py writes them")
    args = parser.parse_args()
    if args.no_gc:
        gc.disable()
    raw = make_events(args.n, args.objects)
    if args.grouped:
        by_ns: dict[str, list[bytes]] = {}
        for event in raw:
            by_ns.setdefault(orjson.loads(event)["metadata"]["namespace"], []).append(event)
        raw = [event for events in by_ns.values() for event in events]
    size = sum(map(len, raw)) / len(raw)
    print(f"{args.n} events, {size:.0f} B average JSON, {args.objects} objects, "
          f"flushes of {args.flush}, best of {args.repeat}, gc {'off' if args.no_gc else 'on'}"
          f"{', namespace order' if args.grouped else ''}\n")
    head = (f"{'mode':<10}{'zlib':>5}{'dd events':>10}{'payload MB':>11}{'z MB':>7}"
            f"{'transform/s':>13}{'+encode/s':>11}{'+zlib/s':>10}{'+filter/s':>11}"
            f"{'+decode/s':>11}{'decode/s':>10}")
    print(head)
    print("-" * len(head))
    for unbundle in (False, True):
        for level in (1, 6):
            r = best_of(args.repeat, raw, unbundle=unbundle, level=level, flush=args.flush)
            rate = [args.n / sum(r[k] for k in keys) for keys in (
                ("transform",), ("transform", "encode"), ("transform", "encode", "zlib"),
                ("transform", "encode", "zlib", "filter"),
                ("transform", "encode", "zlib", "filter", "decode"), ("decode",))]
            print(f"{'unbundled' if unbundle else 'bundled':<10}{level:>5}{r['dd_events']:>10.0f}"
                  f"{r['raw'] / 1e6:>11.1f}{r['z'] / 1e6:>7.1f}"
                  + "".join(f"{x:>{w}.0f}" for x, w in zip(rate, (13, 11, 10, 11, 11, 10),
                                                           strict=True)))


if __name__ == "__main__":
    main()
