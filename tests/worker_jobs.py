"""Job functions for the lifecycle tests and the memory bench, run in real worker processes.

Importable as ``worker_jobs`` (the tests directory is on the workers' ``sys.path``).
"""

from __future__ import annotations

import os
import time

from loguru import logger

from workers.loop import WorkerContext
from workers.protocol import Token
from workers.registry import WorkerKind, kinds

SECRET = "abcd1234secretkey5678"
"""The API key the tests configure; no log line may contain it."""


def steady(ctx: WorkerContext) -> None:
    """Runs until told to stop, counting ticks."""
    ctx.gauge("pid", os.getpid())
    while not ctx.stopping.wait(0.02):
        ctx.count("ticks_total")


def chatty(ctx: WorkerContext) -> None:
    """Logs an INFO and a DEBUG line every 20 ms, numbered, until stopped."""
    n = 0
    while not ctx.stopping.wait(0.02):
        n += 1
        logger.info("chatty {} info {} {}", ctx.name, n, "x" * 300)
        logger.debug("chatty {} debug {}", ctx.name, n)
        ctx.count("lines_total")


def crash_now(ctx: WorkerContext) -> None:
    raise RuntimeError(f"boom with key {ctx.settings.intake.api_key}")


def crash_later(ctx: WorkerContext) -> None:
    """Runs 0.6 s, then fails: a "stable" run when the pool's stable_after_s is shorter."""
    if not ctx.stopping.wait(0.6):
        raise RuntimeError("failed after a stable run")


def progress(ctx: WorkerContext) -> None:
    """Reports the token it started from, then acknowledges rv+1, rv+2, ... every 20 ms."""
    rv = int(ctx.token.resource_version) if ctx.token else 0
    ctx.gauge("start_rv", rv)
    while not ctx.stopping.wait(0.02):
        rv += 1
        ctx.progress(Token(str(rv)))
    ctx.progress(Token(str(rv + 1000)))  # the batch finished during the stop grace


def hog(ctx: WorkerContext) -> None:
    """Holds 200 MB of touched memory (allocated in steps: heartbeats go on meanwhile)."""
    ballast = []
    for _ in range(20):
        ballast.append(b"\1" * (10 * 2**20))
        time.sleep(0.01)
    ctx.stopping.wait()


def stubborn(ctx: WorkerContext) -> None:
    """Ignores Stop and SIGTERM: only SIGKILL ends it."""
    while True:
        time.sleep(0.05)


def kube(ctx: WorkerContext) -> None:
    """What a real worker holds: the Kubernetes client (for the memory bench)."""
    import orjson  # noqa: F401
    from kubernetes import client

    api = client.CoreV1Api(client.ApiClient(client.Configuration()))
    ctx.gauge("ready", 1)
    ctx.stopping.wait()
    del api


def _kind(name: str, job: str, depends_on: set[str], preload: tuple[str, ...] = ()
          ) -> WorkerKind:
    return WorkerKind(name, f"worker_jobs:{job}", frozenset(depends_on), preload)


TEST_KINDS = kinds(
    _kind("a", "steady", {"events"}),
    _kind("b", "steady", {"controlplane"}),
    _kind("chatty", "chatty", {"events"}),
    _kind("chatty2", "chatty", {"controlplane"}),
    _kind("crash", "crash_now", {"events"}),
    _kind("crash_later", "crash_later", {"events"}),
    _kind("progress", "progress", {"events"}),
    _kind("hog", "hog", {"events"}),
    _kind("stubborn", "stubborn", {"events"}),
)

_KUBE = ("kubernetes.client", "kubernetes.client.api.core_v1_api", "orjson")
BENCH_KINDS = kinds(
    _kind("events", "kube", {"events"}, _KUBE),
    _kind("controlplane", "kube", {"controlplane"}, _KUBE),
)
