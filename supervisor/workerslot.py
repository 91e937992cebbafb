"""One worker kind in the pool: its current process, restart backoff and history.

The pool mutates slots under its lock; methods here never block and never log (they return
what is worth logging, so the pool logs after releasing its lock).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from supervisor.status import WorkerStatus
from supervisor.workerproc import WorkerProcess, describe_exit
from workers.backoff import Attempts
from workers.protocol import Heartbeat
from workers.registry import WorkerKind

__all__ = ["WorkerSlot"]


@dataclass(eq=False)
class WorkerSlot:
    """A kind's state: ``starting | running | backoff | stopping | stopped``."""

    kind: WorkerKind
    attempts: Attempts
    enabled: bool = False
    state: str = "stopped"
    proc: WorkerProcess | None = None
    launch_at: float | None = None
    """When to start the next process (None: not scheduled)."""
    relaunch: bool = False
    """Start again as soon as the current process is gone (a reload restart)."""
    after_crash: bool = False
    restarts: int = 0
    """Processes started to replace a crashed one."""
    crashes: Counter[str] = field(default_factory=Counter)
    last_exit_code: int | None = None
    last_exit_reason: str = ""
    healthy: bool = True
    detail: str = ""
    stats: Mapping[str, float] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)

    def enable(self, now: float) -> None:
        self.enabled = True
        self.attempts.reset()
        if self.proc is None:
            self.launch_at = now
            self.state = "starting"

    def stop(self, grace_s: float, now: float, why: str) -> WorkerProcess | None:
        """Ask the current process to stop (returns it, to be sent ``Stop``)."""
        self.launch_at = None
        proc = self.proc
        if proc is None:
            self.state = "stopped"
            return None
        proc.request_stop(grace_s, now, why)
        self.state = "stopping"
        return proc

    def heartbeat(self, proc: WorkerProcess, beat: Heartbeat, now: float) -> None:
        proc.last_heartbeat = now
        self.healthy, self.detail, self.stats = beat.healthy, beat.detail, beat.stats
        self.gauges = beat.gauges
        if self.state == "starting" and self.proc is proc:
            self.state = "running"

    def launched(self, proc: WorkerProcess, *, stale: bool, now: float) -> None:
        """``proc`` started; ``stale``: the pool was stopped meanwhile (no ``Start``)."""
        self.proc = proc
        self.attempts.started()
        if stale:
            proc.request_stop(0.0, now, "stopped")
            self.state = "stopping"
            return
        self.state = "starting"
        if self.after_crash:
            self.after_crash = False
            self.restarts += 1

    def launch_failed(self, reason: str, now: float) -> float:
        """Starting a process failed: retry after the backoff (returned)."""
        return self._backoff(f"launch failed: {reason}", "launch", now)

    def finish(self, now: float, *, active: bool, generation: int) -> tuple[str, str]:
        """The process is gone and its pipe drained: record it, decide what is next.

        Returns a log level and line.
        """
        proc = self.proc
        assert proc is not None
        if proc.conn_open:
            proc.close_conn()
        self.proc = None
        code = proc.process.exitcode
        reason, category = describe_exit(code)
        crashed = proc.crashed or not proc.stop_requested
        if proc.crashed:
            reason, category = proc.end_reason, proc.end_category
        self.last_exit_code = code
        self.last_exit_reason = reason if crashed else f"{proc.end_reason} ({reason})"
        name = self.kind.name
        if not (self.enabled and active):
            self.state = "stopped"
            return "INFO", f"worker {name} stopped ({reason})"
        if self.relaunch or proc.generation != generation or not crashed:
            # A reload restart, or stop() then start() while this process was ending.
            why = "for new settings" if self.relaunch else "after a stop"
            self.relaunch = False
            self.launch_at = now
            self.state = "starting"
            return "INFO", f"worker {name} restarting {why}"
        delay = self._backoff(reason, category, now)
        line = f"worker {name} (pid {proc.pid}) crashed: {reason}; restart in {delay:.2f} s"
        return "WARNING", line

    def _backoff(self, reason: str, category: str, now: float) -> float:
        delay = self.attempts.next_delay()
        self.crashes[category] += 1
        self.last_exit_reason = reason
        self.after_crash = True
        self.launch_at = now + delay
        self.state = "backoff"
        return delay

    def status(self, now: float) -> WorkerStatus:
        proc = self.proc
        beat = proc.last_heartbeat if proc is not None else None
        return WorkerStatus(
            kind=self.kind.name,
            state=self.state,
            pid=proc.pid if proc is not None else None,
            restarts=self.restarts,
            last_exit_code=self.last_exit_code,
            last_exit_reason=self.last_exit_reason,
            heartbeat_age_s=None if beat is None else max(0.0, now - beat),
            rss_bytes=proc.rss_bytes if proc is not None else None,
            cpu_percent=proc.cpu_percent if proc is not None else None,
            healthy=self.healthy,
            detail=self.detail,
            stats=dict(self.stats),
            gauges=dict(self.gauges),
        )
