"""A minimal supervisor for the lifecycle tests, run as its own process.

    python -c "from pool_script import main; main()" MODE [ARGS]   (cwd or PYTHONPATH: tests/)

Modes:
  pids METHOD KIND...   start the kinds, print {"supervisor", "workers", "helpers"} as one
                        JSON line, then wait to be killed.
  logs FORMAT           chatty workers; switch the level to DEBUG mid-run; log the secret.
  reaper                make orphans as a subreaper, reap them, check multiprocessing's own.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import sys
import time

import psutil
from loguru import logger
from worker_jobs import SECRET, TEST_KINDS

from supervisor import logs, pid1
from supervisor.lifecycle import WorkerPool
from workers.backoff import Backoff
from workers.settings import IntakeSettings, WorkerSettings

SETTINGS = WorkerSettings(heartbeat_interval_s=0.2, intake=IntakeSettings(api_key=SECRET))


def _pool(method: str = "forkserver") -> WorkerPool:
    return WorkerPool(token_source=lambda kind: None, on_progress=lambda kind, token: None,
                      registry=TEST_KINDS, start_method=method,
                      backoff=Backoff(base_s=0.2, factor=2.0, cap_s=1.0, jitter=0.0))


def _until(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {predicate}")
        time.sleep(0.02)


def _stat(pool: WorkerPool, kind: str, key: str) -> float:
    return next((w.stats.get(key, 0.0) for w in pool.snapshot() if w.kind == kind), 0.0)


def pids(method: str, kinds: list[str]) -> None:
    logs.setup_logging(level="INFO", secrets=[SECRET])
    pool = _pool(method)
    pool.start(SETTINGS, kinds)
    _until(lambda: all(w.state == "running" for w in pool.snapshot()))
    workers = {w.kind: w.pid for w in pool.snapshot()}
    print(json.dumps({"supervisor": os.getpid(), "workers": workers,
                      "helpers": sorted(pid1.helper_pids())}), flush=True)
    while True:
        time.sleep(1)


def logs_mode(fmt: str) -> None:
    logs.setup_logging(level="INFO", json=fmt == "json", secrets=[SECRET])
    settings = dataclasses.replace(SETTINGS, log_format_json=fmt == "json")
    pool = _pool()
    kinds = ["chatty", "chatty2", "crash"]
    pool.start(settings, kinds)
    _until(lambda: _stat(pool, "chatty", "lines_total") >= 20
           and _stat(pool, "chatty2", "lines_total") >= 20)
    before = _stat(pool, "chatty", "lines_total")
    logger.info("LEVEL-CHANGE")
    logs.configure(level="DEBUG")
    pool.apply(dataclasses.replace(settings, log_level="DEBUG"), kinds)
    _until(lambda: _stat(pool, "chatty", "lines_total") >= before + 20)
    logger.info("the key is {}", SECRET)  # must come out masked
    pool.stop(2.0)
    logger.info("STOPPED")
    pool.close()
    logs.flush()


def reaper() -> None:
    logs.setup_logging(level="INFO")
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, ctypes.c_ulong(1), 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    pool = _pool("forkserver")
    pool.start(SETTINGS, ["a"])
    _until(lambda: all(w.state == "running" for w in pool.snapshot()))
    first_worker = pool.snapshot()[0].pid
    # Orphans: a child forks a grandchild and exits; the grandchild becomes ours.
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(0.3)
            os._exit(7)
        os._exit(0)
    if os.fork() == 0:  # a sleeper that only a forwarded SIGTERM ends
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    time.sleep(0.8)
    # A dead fork server is a zombie multiprocessing itself must wait for.
    server = pid1.forkserver_pid()
    os.kill(server, signal.SIGKILL)
    _until(lambda: psutil.Process(server).status() == psutil.STATUS_ZOMBIE)
    reaped = pid1.reap_orphans()
    # The worker died with its fork server (PDEATHSIG) and is restarted on a new one.
    _until(lambda: pool.snapshot()[0].state == "running"
           and pool.snapshot()[0].pid != first_worker)
    helpers = pid1.helper_pids()
    sent = pid1.forward_signal()
    time.sleep(0.5)
    reaped += pid1.reap_orphans()
    pool.close(2.0)
    print(json.dumps({"reaped": reaped, "server": server, "helpers": sorted(helpers),
                      "sent": sent, "first_worker": first_worker,
                      "restarts": pool.snapshot()[0].restarts}), flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "pids":
        pids(args[0], args[1:])
    elif mode == "logs":
        logs_mode(args[0])
    elif mode == "reaper":
        reaper()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
