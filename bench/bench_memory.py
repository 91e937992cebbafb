"""Memory of a leader pod and a follower pod, per process, for each worker start method.

    python bench/bench_memory.py [--settle 3]

Each scenario runs in a fresh interpreter (the "pod"): a supervisor that imports what the real
one imports and holds a Kubernetes client, plus, on the leader, two workers that import
kubernetes + orjson and create an ApiClient/CoreV1Api (as the events and control-plane
workers do). USS counts pages private to one process; pages a worker still shares with the
fork server count in nobody's USS, so PSS (shared pages split between their users) is
printed too: the PSS total is what the pod really costs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
SUPERVISOR_MODULES = ("supervisor.cli", "supervisor.config", "supervisor.elector",
                      "supervisor.checkpoint", "supervisor.health", "supervisor.metrics")
KUBE = ("kubernetes.client", "kubernetes.client.api.core_v1_api", "orjson")
SCENARIOS = (
    ("follower", "forkserver"),
    ("leader", "spawn"),
    ("leader", "forkserver"),
    ("follower-after-leading", "forkserver"),
    ("follower-after-leading-keep-forkserver", "forkserver"),
)


def kube_job(ctx: object) -> None:
    """A worker holding the Kubernetes client, after a full collection (a long run)."""
    import orjson  # noqa: F401
    from kubernetes import client

    api = client.CoreV1Api(client.ApiClient(client.Configuration()))
    gc.collect()
    ctx.gauge("ready", 1)  # type: ignore[attr-defined]
    ctx.stopping.wait()  # type: ignore[attr-defined]
    del api


def _label(proc: psutil.Process, me: int) -> str:
    if proc.pid == me:
        return "supervisor"
    cmd = " ".join(proc.cmdline())
    if "forkserver import main" in cmd and proc.ppid() == me:
        return "forkserver"  # its children (the workers) show its command line too
    if "resource_tracker" in cmd:
        return "resource_tracker"
    return proc.name()


def measure() -> list[dict[str, object]]:
    me = psutil.Process()
    rows = []
    for proc in [me, *me.children(recursive=True)]:
        mem = proc.memory_full_info()
        rows.append({"process": _label(proc, me.pid), "pid": proc.pid, "uss": mem.uss,
                     "pss": mem.pss, "rss": mem.rss})
    return rows


def pod(role: str, method: str, settle_s: float) -> None:
    """One pod (runs in its own interpreter, prints its measurement as JSON)."""
    sys.path.insert(0, str(HERE))
    imported = []
    for name in SUPERVISOR_MODULES:
        try:
            __import__(name)
            imported.append(name)
        except Exception as exc:  # other engineers' modules may be unfinished
            print(f"bench: cannot import {name}: {exc}", file=sys.stderr)
    from kubernetes import client

    from supervisor import logs
    from supervisor.lifecycle import WorkerPool
    from workers.registry import WorkerKind, kinds
    from workers.settings import WorkerSettings

    elector_api = client.CoreV1Api(client.ApiClient(client.Configuration()))  # noqa: F841
    logs.setup_logging(level="WARNING")
    registry = kinds(*(WorkerKind(name, "bench_memory:kube_job", frozenset(), KUBE)
                       for name in ("events", "controlplane")))
    pool = WorkerPool(token_source=lambda kind: None, on_progress=lambda kind, token: None,
                      registry=registry, start_method=method,
                      release_forkserver=not role.endswith("keep-forkserver"))
    if role != "follower":
        pool.start(WorkerSettings(), list(registry))
        deadline = time.monotonic() + 60
        while not all(w.gauges.get("ready") for w in pool.snapshot()):
            if time.monotonic() > deadline:
                raise SystemExit("workers did not get ready")
            time.sleep(0.1)
        if role.startswith("follower-after-leading"):
            pool.stop(5.0)
    gc.collect()
    time.sleep(settle_s)
    print(json.dumps({"role": role, "method": method, "imported": imported,
                      "rows": measure()}), flush=True)
    pool.close(5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    mib = 2**20
    for role, method in SCENARIOS:
        code = f"import bench_memory as b; b.pod({role!r}, {method!r}, {args.settle})"
        out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
        if out.returncode != 0:
            print(f"{role}/{method}: failed\n{out.stderr[-2000:]}")
            continue
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"\n== {role} pod, workers by {method} "
              f"(supervisor imports: {', '.join(doc['imported']) or 'none'})")
        print(f"{'process':<18}{'pid':>8}{'USS MB':>9}{'PSS MB':>9}{'RSS MB':>9}")
        for r in doc["rows"]:
            print(f"{r['process']:<18}{r['pid']:>8}{r['uss'] / mib:>9.1f}{r['pss'] / mib:>9.1f}"
                  f"{r['rss'] / mib:>9.1f}")
        uss = sum(r["uss"] for r in doc["rows"]) / mib
        pss = sum(r["pss"] for r in doc["rows"]) / mib
        print(f"{'total':<26}{uss:>9.1f}{pss:>9.1f}")


if __name__ == "__main__":
    main()
