"""Worker processes under supervision: real processes, real signals, deadlines not sleeps."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from loguru import logger
from polling import wait_for
from token_keeper import Checkpointer
from worker_jobs import SECRET, TEST_KINDS

from supervisor import pid1
from supervisor.lifecycle import WorkerPool
from supervisor.status import WorkerStatus
from workers.backoff import Backoff
from workers.protocol import Token
from workers.registry import KINDS, WorkerKind
from workers.settings import EventSettings, IntakeSettings, WorkerSettings

TESTS = Path(__file__).parent
SETTINGS = WorkerSettings(heartbeat_interval_s=0.25, intake=IntakeSettings(api_key=SECRET))
FAST = Backoff(base_s=0.1, factor=2.0, cap_s=5.0, jitter=0.0)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def make_pool():
    pools = []

    def make(**overrides):
        checkpointer = overrides.pop("checkpointer", Checkpointer())
        options = {"token_source": checkpointer.token_source,
                   "on_progress": checkpointer.on_progress, "registry": TEST_KINDS,
                   "backoff": FAST, "first_heartbeat_timeout_s": 10.0,
                   "sample_interval_s": 0.1, "release_forkserver": False}
        options.update(overrides)
        pool = WorkerPool(**options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close(grace_s=1.0)


def worker(pool: WorkerPool, kind: str) -> WorkerStatus:
    return next(w for w in pool.snapshot() if w.kind == kind)


def running(pool: WorkerPool, kind: str, not_pid: int | None = None) -> WorkerStatus | None:
    w = worker(pool, kind)
    ok = w.state == "running" and w.pid is not None and w.pid != not_pid
    return w if ok else None


def test_start_snapshot_stop(make_pool):
    pool = make_pool()
    pool.start(SETTINGS, ["a", "b"])
    a = wait_for(lambda: running(pool, "a"), what="a running")
    b = wait_for(lambda: running(pool, "b"), what="b running")
    w = wait_for(lambda: (w := worker(pool, "a")).rss_bytes and w.stats.get("ticks_total") and w,
                 what="a sampled")
    assert w.heartbeat_age_s is not None
    assert w.heartbeat_age_s < 2.0
    assert w.gauges["pid"] == a.pid
    assert w.cpu_percent is not None
    assert psutil.Process(a.pid).name() == "a"  # PR_SET_NAME
    t0 = time.monotonic()
    pool.stop(2.0)
    assert time.monotonic() - t0 < 2.0  # both returned promptly on Stop
    assert gone(a.pid)
    assert gone(b.pid)
    for kind in ("a", "b"):
        w = worker(pool, kind)
        assert (w.state, w.pid, w.last_exit_code, w.restarts) == ("stopped", None, 0, 0)


def test_sigkill_restarts_only_that_worker(make_pool):
    pool = make_pool()
    pool.start(SETTINGS, ["a", "b"])
    a = wait_for(lambda: running(pool, "a"), what="a running")
    b = wait_for(lambda: running(pool, "b"), what="b running")
    os.kill(a.pid, signal.SIGKILL)
    a2 = wait_for(lambda: running(pool, "a", not_pid=a.pid), what="a restarted")
    assert a2.restarts == 1
    assert a2.last_exit_code == -signal.SIGKILL
    assert a2.last_exit_reason == "killed by SIGKILL"
    b2 = worker(pool, "b")
    assert (b2.pid, b2.restarts, b2.state) == (b.pid, 0, "running")
    assert pool.crash_counts()["a"] == {"signal": 1}


def test_sigstopped_worker_is_replaced_and_stop_kills_a_stopped_one(make_pool):
    pool = make_pool()
    pool.start(SETTINGS, ["a"])
    a = wait_for(lambda: running(pool, "a"), what="a running")
    os.kill(a.pid, signal.SIGSTOP)
    a2 = wait_for(lambda: running(pool, "a", not_pid=a.pid), what="a replaced")
    assert a2.last_exit_reason.startswith("heartbeat missed")
    assert gone(a.pid)
    os.kill(a2.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    pool.stop(1.0)  # Stop and SIGTERM are never handled: SIGKILL at the grace
    elapsed = time.monotonic() - t0
    assert gone(a2.pid)
    assert 0.9 <= elapsed < 4.0


def test_stubborn_job_is_ended_within_the_grace(make_pool):
    pool = make_pool()
    pool.start(SETTINGS, ["stubborn"])
    s = wait_for(lambda: running(pool, "stubborn"), what="stubborn running")
    t0 = time.monotonic()
    pool.stop(1.0)
    assert 0.9 <= time.monotonic() - t0 < 4.0
    assert gone(s.pid)
    assert worker(pool, "stubborn").last_exit_code in (3, -signal.SIGKILL)


def test_sigterm_is_a_graceful_stop_then_a_restart(make_pool):
    pool = make_pool()
    pool.start(SETTINGS, ["a"])
    a = wait_for(lambda: running(pool, "a"), what="a running")
    os.kill(a.pid, signal.SIGTERM)  # not from the pool: the worker finishes, exits 0
    a2 = wait_for(lambda: running(pool, "a", not_pid=a.pid), what="a restarted")
    assert (a2.last_exit_code, a2.last_exit_reason, a2.restarts) == (0, "exit 0", 1)


def test_stop_releases_the_idle_helpers_and_start_brings_them_back(make_pool):
    pool = make_pool(release_forkserver=True)
    pool.start(SETTINGS, ["a"])
    a = wait_for(lambda: running(pool, "a"), what="a running")
    helpers = pid1.helper_pids()
    assert len(helpers) == 2
    pool.stop(2.0)
    assert pid1.helper_pids() == set()
    assert all(gone(pid) for pid in helpers)
    pool.start(SETTINGS, ["a"])
    wait_for(lambda: running(pool, "a", not_pid=a.pid), what="a running again")
    assert len(pid1.helper_pids()) == 2


def _backoff_periods(pool: WorkerPool, kind: str, count: int) -> list[float]:
    """Durations of the next ``count`` stays in "backoff", polled every 5 ms."""
    periods: list[float] = []
    entered = None
    deadline = time.monotonic() + 30
    while len(periods) < count:
        assert time.monotonic() < deadline, f"saw only {periods}"
        state = worker(pool, kind).state
        now = time.monotonic()
        if state == "backoff" and entered is None:
            entered = now
        elif state != "backoff" and entered is not None:
            periods.append(now - entered)
            entered = None
        time.sleep(0.005)
    return periods


def test_failed_job_restarts_with_growing_backoff(make_pool):
    pool = make_pool(backoff=Backoff(base_s=0.2, factor=2.0, cap_s=5.0, jitter=0.0))
    pool.start(SETTINGS, ["crash"])
    periods = _backoff_periods(pool, "crash", 3)
    w = worker(pool, "crash")
    assert w.last_exit_reason.startswith("Failed: RuntimeError: boom with key")
    assert SECRET not in w.last_exit_reason  # masked in the worker
    assert w.last_exit_code == 1
    assert w.restarts >= 3
    for got, nominal in zip(periods, (0.2, 0.4, 0.8), strict=True):
        assert got >= nominal - 0.03, periods
    assert periods[2] > periods[0] * 2.5, periods


def test_backoff_resets_after_a_stable_run(make_pool):
    pool = make_pool(backoff=Backoff(base_s=0.2, factor=2.0, cap_s=5.0, jitter=0.0),
                     stable_after_s=0.3)
    pool.start(SETTINGS, ["crash_later"])  # fails after 0.6 s of running
    periods = _backoff_periods(pool, "crash_later", 3)
    # Without the reset the third delay would be 0.8 s.
    assert all(0.17 <= p < 0.6 for p in periods), periods
    assert worker(pool, "crash_later").last_exit_reason == (
        "Failed: RuntimeError: failed after a stable run")


def test_memory_limit_kills_and_restarts(make_pool):
    pool = make_pool(memory_limit_mb=150)
    pool.start(SETTINGS, ["hog"])
    first = wait_for(lambda: worker(pool, "hog").pid, what="hog started")
    w = wait_for(lambda: (w := worker(pool, "hog")).last_exit_reason and w, what="hog killed")
    assert re.fullmatch(r"memory limit \(\d+ MB > 150 MB\)", w.last_exit_reason)
    assert w.last_exit_code == -signal.SIGKILL
    assert gone(first)
    wait_for(lambda: worker(pool, "hog").restarts >= 1, what="hog restarted")
    assert pool.crash_counts()["hog"]["memory"] >= 1


def test_progress_forwarded_and_restart_resumes_from_latest_token(make_pool):
    checkpointer = Checkpointer(Token("100"))
    pool = make_pool(checkpointer=checkpointer)
    pool.start(SETTINGS, ["progress"])
    p = wait_for(lambda: running(pool, "progress"), what="progress running")
    wait_for(lambda: int(checkpointer.token.resource_version) >= 110, what="progress received")
    assert checkpointer.received[0] == Token("101")  # resumed from the start token
    os.kill(p.pid, signal.SIGKILL)
    p2 = wait_for(lambda: running(pool, "progress", not_pid=p.pid), what="restarted")
    handed = checkpointer.handed_out[-1]
    assert handed is not None
    assert int(handed.resource_version) >= 110
    w = wait_for(lambda: (w := worker(pool, "progress")).gauges.get("start_rv") and w,
                 what="start_rv reported")
    assert w.pid == p2.pid
    assert w.gauges["start_rv"] == int(handed.resource_version)
    # The batch a worker finishes during the stop grace is acknowledged before stop returns.
    pool.stop(2.0)
    assert int(checkpointer.received[-1].resource_version) > 1000


def test_reload_restarts_only_the_affected_kind(make_pool):
    checkpointer = Checkpointer(Token("7"))
    pool = make_pool(checkpointer=checkpointer)
    pool.start(SETTINGS, ["a", "b"])
    a = wait_for(lambda: running(pool, "a"), what="a running")
    b = wait_for(lambda: running(pool, "b"), what="b running")
    calls = len(checkpointer.handed_out)
    # Log level only: nobody restarts.
    pool.apply(dataclasses.replace(SETTINGS, log_level="DEBUG"), ["a", "b"])
    # An events setting: only "a" (depends on events) restarts, with the current token.
    changed = dataclasses.replace(SETTINGS, log_level="DEBUG",
                                  events=EventSettings(batch_max_events=10))
    pool.apply(changed, ["a", "b"])
    a2 = wait_for(lambda: running(pool, "a", not_pid=a.pid), what="a restarted")
    assert a2.restarts == 0  # a reload restart is not a crash
    assert checkpointer.handed_out[calls:] == [Token("7")]
    assert running(pool, "b").pid == b.pid
    # Disable b, enable progress.
    pool.apply(changed, ["a", "progress"])
    wait_for(lambda: worker(pool, "b").state == "stopped", what="b stopped")
    wait_for(lambda: running(pool, "progress"), what="progress started")
    assert gone(b.pid)
    assert running(pool, "a").pid == a2.pid


def test_unknown_kind_is_a_clear_error(make_pool):
    pool = make_pool()
    with pytest.raises(ValueError, match=r"unknown worker kind\(s\) \['nope'\]"):
        pool.start(SETTINGS, ["a", "nope"])


def test_registry_validates_and_never_imports_jobs():
    assert set(KINDS) == {"events", "controlplane"}
    assert KINDS["events"].restart_needed(SETTINGS, dataclasses.replace(
        SETTINGS, events=EventSettings(unbundle=True)))
    assert not KINDS["controlplane"].restart_needed(SETTINGS, dataclasses.replace(
        SETTINGS, events=EventSettings(unbundle=True)))
    with pytest.raises(ValueError, match="not 'module:function'"):
        WorkerKind("x", "no_function", frozenset())
    with pytest.raises(ValueError, match="unknown WorkerSettings fields"):
        WorkerKind("x", "m:f", frozenset({"kubee"}))
    code = "import sys, workers.registry; print('workers.events' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_a_stopped_worker_does_not_block_others_logging(make_pool):
    pool = make_pool()
    pool.start(SETTINGS, ["chatty", "chatty2"])
    c1 = wait_for(lambda: running(pool, "chatty"), what="chatty running")
    wait_for(lambda: running(pool, "chatty2"), what="chatty2 running")
    os.kill(c1.pid, signal.SIGSTOP)  # perhaps in the middle of a line
    try:
        before = worker(pool, "chatty2").stats.get("lines_total", 0)
        wait_for(lambda: worker(pool, "chatty2").stats.get("lines_total", 0) >= before + 20,
                 timeout=10, what="chatty2 still logging")
        done = threading.Event()
        threading.Thread(target=lambda: (logger.info("supervisor line"), done.set()),
                         daemon=True).start()
        assert done.wait(2.0), "the supervisor's logging is blocked"
    finally:
        os.kill(c1.pid, signal.SIGCONT)


def test_forkserver_death_kills_and_restarts_workers(make_pool):
    pool = make_pool()
    pool.start(SETTINGS, ["a", "b"])
    a = wait_for(lambda: running(pool, "a"), what="a running")
    b = wait_for(lambda: running(pool, "b"), what="b running")
    server = pid1.forkserver_pid()
    assert server is not None
    assert psutil.Process(a.pid).ppid() == server
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: gone(a.pid) and gone(b.pid), timeout=5, what="workers died with it")
    wait_for(lambda: running(pool, "a", not_pid=a.pid) and running(pool, "b", not_pid=b.pid),
             what="both restarted on a new fork server")
    assert pid1.forkserver_pid() != server


# ---- a supervisor in its own process ---------------------------------------------------


def run_script(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from pool_script import main; main()", *args],
                          cwd=TESTS, capture_output=True, text=True, timeout=timeout_s,
                          check=False)


@pytest.mark.parametrize(("method", "stopped"), [("forkserver", False), ("forkserver", True),
                                                 ("spawn", True)])
def test_sigkilled_supervisor_leaves_no_process(method, stopped):
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pool_script import main; main()", "pids", method, "a", "b"],
        cwd=TESTS, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        workers = list(info["workers"].values())
        pod = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert set(workers) <= set(pod)  # and multiprocessing's helpers
        if stopped:
            # Frozen workers cannot notice anything: only the kernel's parent-death
            # signal, through the fork server's exit, can end them.
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
        proc.kill()
        proc.wait(5)
        wait_for(lambda: all(gone(pid) for pid in pod), timeout=10,
                 what=f"no survivor among {pod}")
    finally:
        proc.kill()
        for pid in locals().get("pod", []):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_logs_from_all_processes_whole_named_and_level_at_once(fmt):
    result = run_script("logs", fmt)
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    assert SECRET not in err
    lines = err.splitlines()
    if fmt == "json":
        docs = [json.loads(line) for line in lines]  # every line one whole object
        records = [(d["process"], d["level"], d["message"], d["time"], d["pid"]) for d in docs]
    else:
        pattern = re.compile(r"^(\S+) (\w+) +(\w+)\[(\d+)\] [\w.]+: (.*)$")
        records = [(m[3], m[2], m[5], m[1], int(m[4])) for x in lines if (m := pattern.match(x))]
    processes = {r[0] for r in records}
    assert {"supervisor", "chatty", "chatty2", "crash"} <= processes
    chatty = [r for r in records if r[2].startswith("chatty ")]
    assert chatty
    for proc, level, message, *_ in chatty:  # each line whole: nothing cut or interleaved
        assert re.fullmatch(rf"chatty {proc} (info \d+ x{{300}}|debug \d+)", message), message
        assert level == ("INFO" if " info " in message else "DEBUG")
    change = next(i for i, r in enumerate(records) if r[2] == "LEVEL-CHANGE")
    changed_at = datetime.fromisoformat(records[change][3])
    assert not any(r[1] == "DEBUG" for r in records[:change])
    for name in ("chatty", "chatty2"):
        assert len({r[4] for r in records if r[0] == name}) == 1  # applied without a restart
        first_debug = next(r for r in records if r[0] == name and r[1] == "DEBUG")
        delay = (datetime.fromisoformat(first_debug[3]) - changed_at).total_seconds()
        assert delay < 1.0, f"{name}: DEBUG lines began {delay:.2f} s after the change"
    assert any(r[2] == "the key is ********" for r in records)
    assert any("Failed: RuntimeError: boom with key ********" in r[2] for r in records)


def test_pid1_reaps_orphans_but_not_multiprocessing_children():
    result = run_script("reaper")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    reaped = dict(info["reaped"])
    assert 7 in reaped.values()  # the orphan
    assert -signal.SIGTERM in reaped.values()  # the sleeper, ended by forward_signal
    assert info["server"] not in reaped  # left for multiprocessing's own waitpid
    assert not set(info["helpers"]) & set(info["sent"])
    assert info["restarts"] >= 1
