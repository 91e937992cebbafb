"""The leader's worker processes: start, watch, restart, reload, stop (fencing).

``WorkerPool`` runs one process per enabled kind (``workers.registry``) from an explicit
multiprocessing context: ``forkserver`` by default, with the heavy modules preloaded in the
fork server so that workers share their pages (see bench/bench_memory.py for the figures).
A monitor thread owns the processes: it waits on every pipe and process sentinel, forwards
``Progress`` to ``on_progress``, and replaces a crashed worker (exit, pipe EOF, ``Failed``,
heartbeats missed for ``heartbeat_misses`` intervals, RSS over the limit) after an
exponential backoff. The caller's thread (the elector) never waits on a worker: ``start``,
``apply`` and ``snapshot`` return at once, and ``stop`` is bounded by its grace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from multiprocessing import get_context
from multiprocessing.connection import wait

from loguru import logger

from supervisor import pid1
from supervisor.logs import LogForwarder
from supervisor.status import WorkerStatus
from supervisor.workerproc import WorkerProcess, launch
from supervisor.workerslot import WorkerSlot
from workers.backoff import RESTART_BACKOFF, Attempts, Backoff
from workers.protocol import Failed, Heartbeat, Progress, Reload, Start, Stop, Token
from workers.registry import KINDS, WorkerKind
from workers.settings import WorkerSettings

__all__ = ["BASE_PRELOAD", "WorkerPool"]

BASE_PRELOAD = ("workers.loop", "loguru", "orjson", "psutil")
"""Imported by the fork server besides each kind's ``preload``."""
_FAILED_GRACE_S = 1.0
"""A worker that sent ``Failed`` exits by itself; killed if still there after this."""
_KILL_WAIT_S = 5.0
"""How long ``stop`` waits after SIGKILL (a process in uninterruptible sleep)."""
_SETTLE_S = 1.0
"""After the processes are gone, how long ``stop`` waits for the monitor to record them."""
_MAX_WAIT_S = 1.0


class WorkerPool:
    """The worker processes of one supervisor; all methods are thread-safe."""

    def __init__(
        self,
        *,
        token_source: Callable[[str], Token | None],
        on_progress: Callable[[str, Token], None],
        registry: Mapping[str, WorkerKind] = KINDS,
        start_method: str = "forkserver",
        memory_limit_mb: float | None = 256,
        backoff: Backoff = RESTART_BACKOFF,
        stable_after_s: float = 60.0,
        heartbeat_misses: int = 3,
        first_heartbeat_timeout_s: float = 10.0,
        reload_grace_s: float = 5.0,
        sample_interval_s: float = 1.0,
        release_forkserver: bool = True,
    ) -> None:
        """``token_source(kind)`` gives the token a (re)started worker resumes from;
        ``on_progress(kind, token)`` receives acknowledged tokens on the monitor thread
        and must return quickly. ``release_forkserver`` ends the idle fork server and
        resource tracker after ``stop`` (a follower should not keep their memory)."""
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method: {start_method!r} (forking a threaded "
                             "supervisor is unsafe; use 'forkserver' or 'spawn')")
        self._ctx = get_context(start_method)
        self._registry = registry
        self._token_source = token_source
        self._on_progress = on_progress
        self.memory_limit_mb = memory_limit_mb
        """RSS limit of one worker (settable on reload); None: no limit."""
        self._backoff = backoff
        self._stable_after_s = stable_after_s
        self._misses = heartbeat_misses
        self._first_timeout_s = first_heartbeat_timeout_s
        self._reload_grace_s = reload_grace_s
        self._sample_interval_s = sample_interval_s
        self._release_forkserver = release_forkserver
        self._lock = threading.Lock()
        self._api_lock = threading.Lock()  # start/apply/stop one at a time
        self._slots: dict[str, WorkerSlot] = {}
        self._settings = WorkerSettings()
        self._active = False
        self._generation = 0
        """Bumped by start and stop: a process launched in an older one never gets Start."""
        self._launching = False
        self._closed = False
        self._next_sample = 0.0
        self._tick_at = time.monotonic()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._forwarder = LogForwarder()
        self._monitor = threading.Thread(target=self._run, name="worker-monitor", daemon=True)
        self._monitor.start()

    # ---- API -------------------------------------------------------------------------

    def start(self, settings: WorkerSettings, kinds: Iterable[str]) -> None:
        """Become active: run one worker of each kind in ``kinds`` (returns at once).

        On an active pool this is ``apply``.
        """
        enabled = self._check_kinds(kinds)
        with self._api_lock:
            with self._lock:
                was_active, self._active = self._active, True
                if not was_active:
                    self._generation += 1
                    self._settings = settings
                    self._set_preload(enabled)
                    now = time.monotonic()
                    for slot in self._slots.values():
                        slot.enabled = False
                    for name in enabled:
                        self._slot(name).enable(now)
            if was_active:
                self._apply(settings, enabled)
        self._wake()

    def apply(self, settings: WorkerSettings, kinds: Iterable[str]) -> None:
        """Reload: restart only workers whose settings changed (current token), start
        newly enabled kinds, stop disabled ones, ``Reload`` the rest (returns at once)."""
        enabled = self._check_kinds(kinds)
        with self._api_lock:
            self._apply(settings, enabled)
        self._wake()

    def stop(self, grace_s: float) -> None:
        """Stop every worker: ``Stop``, SIGTERM at half the grace, SIGKILL at the grace.

        Returns once no worker process can run any more: normally within the grace; a
        process in uninterruptible sleep is given up on (logged) 5 s after its SIGKILL.
        ``Progress`` sent before a worker exits reaches ``on_progress`` before this returns
        (waited for at most 1 s after the processes are gone).
        """
        t0 = time.monotonic()
        with self._api_lock:
            with self._lock:
                self._active = False
                self._generation += 1
                procs = []
                for slot in self._slots.values():
                    slot.relaunch = False
                    if (proc := slot.stop(grace_s, t0, "stopped")) is not None:
                        procs.append(proc)
            self._wake()
            for proc in procs:
                proc.send(Stop(grace_s))
            self._await_gone(t0, grace_s)
            # Gone is enough for fencing; also let the monitor record the exits (drain the
            # last Progress, read exit codes) before the fork server that reports them goes.
            settled = self._await_settled(time.monotonic() + _SETTLE_S)
            if (settled and self._release_forkserver
                    and self._ctx.get_start_method() == "forkserver"
                    and not pid1.stop_helpers()):
                logger.warning("multiprocessing's fork server or resource tracker stays idle")

    def snapshot(self) -> tuple[WorkerStatus, ...]:
        """Each kind's state for /health and /metrics (never blocks on a worker)."""
        now = time.monotonic()
        with self._lock:
            return tuple(slot.status(now) for slot in self._slots.values())

    def crash_counts(self) -> dict[str, dict[str, int]]:
        """Crashes by kind and cause (exit, signal, eof, failed, heartbeat, memory, launch)."""
        with self._lock:
            return {name: dict(slot.crashes) for name, slot in self._slots.items()}

    @property
    def tick_age_s(self) -> float:
        """Seconds since the monitor thread last went round (it does at least every 1 s)."""
        return time.monotonic() - self._tick_at

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the workers and the pool's threads (the pool is unusable after)."""
        self.stop(grace_s)
        with self._lock:
            self._closed = True
        self._wake()
        self._monitor.join(2.0)
        self._forwarder.close()
        if not self._monitor.is_alive():
            wake_r, wake_w, self._wake_w = self._wake_r, self._wake_w, -1
            os.close(wake_r)
            os.close(wake_w)

    # ---- API helpers -------------------------------------------------------------------

    def _check_kinds(self, kinds: Iterable[str]) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(kinds))
        unknown = [n for n in names if n not in self._registry]
        if unknown:
            raise ValueError(f"unknown worker kind(s) {unknown}; known: {sorted(self._registry)}")
        return names

    def _set_preload(self, enabled: tuple[str, ...]) -> None:
        if self._ctx.get_start_method() != "forkserver":
            return
        modules = dict.fromkeys(BASE_PRELOAD)
        for name in enabled:
            modules.update(dict.fromkeys(self._registry[name].preload))
        # Read when the fork server starts: at the first start after each release.
        self._ctx.set_forkserver_preload(list(modules))

    def _slot(self, name: str) -> WorkerSlot:
        slot = self._slots.get(name)
        if slot is None:
            attempts = Attempts(self._backoff, stable_after_s=self._stable_after_s)
            slot = self._slots[name] = WorkerSlot(kind=self._registry[name], attempts=attempts)
        return slot

    def _apply(self, settings: WorkerSettings, enabled: tuple[str, ...]) -> None:
        now = time.monotonic()
        stops: list[WorkerProcess] = []
        reloads: list[WorkerProcess] = []
        with self._lock:
            old, self._settings = self._settings, settings
            if not self._active:
                return
            for name in enabled:
                if not (slot := self._slot(name)).enabled:
                    slot.enable(now)
            for slot in self._slots.values():
                proc = slot.proc
                if not slot.enabled:
                    continue
                if slot.kind.name not in enabled:
                    slot.enabled = slot.relaunch = False
                    if proc is None or not proc.stop_requested:
                        stopped = slot.stop(self._reload_grace_s, now, "disabled")
                        stops += [stopped] if stopped else []
                elif proc is None or proc.stop_requested or proc.end_reason:
                    continue  # the next process starts with the new settings
                elif slot.kind.restart_needed(old, settings):
                    slot.relaunch = True
                    stops.append(proc)
                    proc.request_stop(self._reload_grace_s, now, "reload")
                    slot.state = "stopping"
                elif old != settings:
                    reloads.append(proc)
                    if old.heartbeat_interval_s != settings.heartbeat_interval_s:
                        proc.last_heartbeat = now  # judge the new interval from now on
        for proc in stops:
            proc.send(Stop(self._reload_grace_s))
        for proc in reloads:
            proc.send(Reload(settings))

    def _await_gone(self, t0: float, grace_s: float) -> None:
        """Escalate (in the caller's thread, whatever the monitor does) until all gone."""
        term_at, kill_at, give_up = t0 + grace_s / 2, t0 + grace_s, t0 + grace_s + _KILL_WAIT_S
        while True:
            with self._lock:
                pending = [s.proc for s in self._slots.values()
                           if s.proc is not None and not s.proc.gone()]
                launching = self._launching
            if not pending and not launching:
                return
            now = time.monotonic()
            if now >= give_up:
                logger.error("worker processes {} still exist {:.1f} s after SIGKILL{}",
                             [p.pid for p in pending], _KILL_WAIT_S,
                             " (a launch hangs)" if launching else "")
                return
            for proc in pending:
                if now >= kill_at and proc.killed_at is None:
                    proc.signal(signal.SIGKILL)
                elif now >= term_at and not proc.termed:
                    proc.termed = True
                    proc.signal(signal.SIGTERM)
            nxt = term_at if now < term_at else kill_at if now < kill_at else give_up
            timeout = max(0.0, min(nxt - now, 0.05 if launching or now >= kill_at else 1.0))
            if pending:
                wait([p.process.sentinel for p in pending], timeout)
            else:
                time.sleep(timeout)  # a launch in flight

    def _await_settled(self, deadline: float) -> bool:
        while True:
            with self._lock:
                if not self._launching and all(s.proc is None for s in self._slots.values()):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            if self._wake_w >= 0:  # never write to a closed (maybe reused) fd
                os.write(self._wake_w, b"x")

    # ---- monitor thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._tick_at = time.monotonic()
            with self._lock:
                if self._closed:
                    return
                procs = [(s, s.proc) for s in self._slots.values() if s.proc is not None]
                timeout = self._next_timeout(time.monotonic())
            waitables: list[object] = [self._wake_r]
            for _, proc in procs:
                if proc.conn_open:
                    waitables.append(proc.conn)
                if proc.exited_at is None:
                    waitables.append(proc.process.sentinel)
            try:
                ready = wait(waitables, timeout)
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                for slot, proc in procs:
                    if proc.conn_open and proc.conn in ready:
                        self._read(slot, proc)
                    if proc.exited_at is None and proc.process.sentinel in ready:
                        proc.process.join(0)  # collects the exit code
                        with self._lock:
                            proc.exited_at = time.monotonic()
                self._tick()
            except Exception:  # the monitor must survive anything
                logger.exception("worker monitor error")
                time.sleep(0.1)

    def _next_timeout(self, now: float) -> float:
        times = [self._next_sample]
        interval = self._settings.heartbeat_interval_s
        for slot in self._slots.values():
            proc = slot.proc
            if proc is None:
                if slot.launch_at is not None:
                    times.append(slot.launch_at)
                continue
            times.append(proc.heartbeat_deadline(interval, self._misses, self._first_timeout_s))
            if (deadline := proc.next_deadline(now)) is not None:
                times.append(deadline)
        return min(_MAX_WAIT_S, max(0.0, min(times) - now))

    def _read(self, slot: WorkerSlot, proc: WorkerProcess) -> None:
        for _ in range(100):  # then let the other workers have a turn
            try:
                if not proc.conn.poll():
                    return
                message = proc.conn.recv()
            except (EOFError, OSError):
                proc.close_conn()
                with self._lock:
                    proc.eof_at = time.monotonic()
                return
            match message:
                case Heartbeat():
                    with self._lock:
                        slot.heartbeat(proc, message, time.monotonic())
                case Progress(token=token):
                    try:
                        self._on_progress(slot.kind.name, token)
                    except Exception:
                        logger.exception("on_progress failed for {}", slot.kind.name)
                case Failed(reason=reason):
                    with self._lock:
                        proc.end(f"Failed: {reason}", "failed", _FAILED_GRACE_S,
                                 time.monotonic())

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            procs = [s.proc for s in self._slots.values() if s.proc is not None]
            sample = now >= self._next_sample
            if sample:
                self._next_sample = now + self._sample_interval_s
        if sample:
            for proc in procs:
                proc.sample()
        launches, lines = [], []
        with self._lock:
            for slot in self._slots.values():
                proc = slot.proc
                if proc is not None:
                    done = proc.check(now, interval_s=self._settings.heartbeat_interval_s,
                                      misses=self._misses, first_timeout_s=self._first_timeout_s,
                                      limit_mb=self.memory_limit_mb)
                    if done:
                        lines.append(slot.finish(now, active=self._active,
                                                 generation=self._generation))
                elif (slot.enabled and self._active and slot.launch_at is not None
                      and slot.launch_at <= now):
                    slot.launch_at = None
                    launches.append(slot)
            self._launching = bool(launches)
            generation, settings = self._generation, self._settings
        for level, line in lines:
            logger.log(level, line)
        try:
            for slot in launches:
                self._launch(slot, settings, generation)
        finally:
            if launches:
                with self._lock:
                    self._launching = False

    def _launch(self, slot: WorkerSlot, settings: WorkerSettings, generation: int) -> None:
        name = slot.kind.name
        try:
            token = self._token_source(name)
            proc, log_r = launch(self._ctx, slot.kind, settings, generation=generation)
        except Exception as exc:  # retried with backoff
            with self._lock:
                delay = slot.launch_failed(str(exc), time.monotonic())
            logger.opt(exception=exc).error("cannot start worker {}; retry in {:.2f} s",
                                            name, delay)
            return
        self._forwarder.attach(name, log_r)
        with self._lock:
            # stop() or a reload while the process was starting: it never gets Start.
            stale = generation != self._generation or not slot.enabled or not self._active
            slot.launched(proc, stale=stale, now=time.monotonic())
        if not stale:
            proc.send(Start(settings, token))
            logger.info("worker {} started (pid {})", name, proc.pid)
