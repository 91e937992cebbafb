"""One worker process as the supervisor holds it: launch, send, signal, tell if gone.

Signals go through a ``psutil.Process`` taken right after the start, which refuses to signal
a pid that has since been reused by another process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

import psutil

from workers import loop
from workers.protocol import FromSupervisor
from workers.registry import WorkerKind
from workers.settings import WorkerSettings

__all__ = ["EOF_GRACE_S", "WorkerProcess", "describe_exit", "launch"]

_SEND_TIMEOUT = (1, 0)
"""struct timeval: seconds, microseconds."""
EOF_GRACE_S = 0.5
"""A pipe at EOF with the process alive after this is a crash ("pipe closed"); an exited
process whose pipe never reaches EOF (a leaked copy) is recorded after this too."""


@dataclass(eq=False)
class WorkerProcess:
    """A started worker process and what the pool knows of it (guarded by the pool lock)."""

    kind: str
    process: BaseProcess
    conn: Connection
    ps: psutil.Process | None
    started_at: float
    generation: int
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    last_heartbeat: float | None = None
    conn_open: bool = True
    eof_at: float | None = None
    exited_at: float | None = None
    end_reason: str = ""
    """Why the pool ended it (heartbeat, memory, Failed, stop...); empty: it ended itself."""
    end_category: str = ""
    crashed: bool = False
    stop_requested: bool = False
    term_at: float | None = None
    kill_at: float | None = None
    termed: bool = False
    killed_at: float | None = None
    rss_bytes: int | None = None
    cpu_percent: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def heartbeat_deadline(self, interval_s: float, misses: int, first_timeout_s: float
                           ) -> float:
        if self.last_heartbeat is None:
            return self.started_at + max(first_timeout_s, misses * interval_s)
        return self.last_heartbeat + misses * interval_s

    def end(self, reason: str, category: str, kill_in_s: float, now: float) -> None:
        """Count it as crashed for ``reason`` and SIGKILL it in ``kill_in_s`` (first wins)."""
        if self.end_reason:
            return
        self.end_reason, self.end_category, self.crashed = reason, category, True
        kill_at = now + kill_in_s
        self.kill_at = kill_at if self.kill_at is None else min(self.kill_at, kill_at)

    def request_stop(self, grace_s: float, now: float, why: str) -> None:
        """Asked to stop: SIGTERM at half the grace, SIGKILL at the grace (not a crash)."""
        self.stop_requested = True
        if not self.end_reason:
            self.end_reason, self.end_category, self.crashed = why, "", False
        self.term_at = min(self.term_at or now + grace_s / 2, now + grace_s / 2)
        self.kill_at = min(self.kill_at or now + grace_s, now + grace_s)

    def next_deadline(self, now: float) -> float | None:
        """The earliest moment ``check`` has something to do (heartbeats aside)."""
        times = [t for t in (self.term_at, self.kill_at) if t is not None]
        times += [t + EOF_GRACE_S for t in (self.eof_at, self.exited_at) if t is not None]
        if self.killed_at is not None:
            times.append(now + 0.1)
        return min(times, default=None)

    def check(
        self,
        now: float,
        *,
        interval_s: float,
        misses: int,
        first_timeout_s: float,
        limit_mb: float | None,
    ) -> bool:
        """Apply heartbeat, memory and stop deadlines; True once gone and its pipe drained."""
        if not self.end_reason and not self.stop_requested and self.exited_at is None:
            if now > self.heartbeat_deadline(interval_s, misses, first_timeout_s):
                silent = now - (self.last_heartbeat or self.started_at)
                self.end(f"heartbeat missed ({silent:.1f} s)", "heartbeat", 0.0, now)
            elif limit_mb is not None and (self.rss_bytes or 0) > limit_mb * 2**20:
                rss_mb = (self.rss_bytes or 0) / 2**20
                self.end(f"memory limit ({rss_mb:.0f} MB > {limit_mb:g} MB)", "memory", 0.0,
                         now)
        if self.eof_at is not None and self.exited_at is None and now >= self.eof_at + \
                EOF_GRACE_S:
            self.end("pipe closed", "eof", 0.0, now)
        if self.exited_at is None:
            if self.term_at is not None and now >= self.term_at and not self.termed:
                self.termed = True
                self.signal(signal.SIGTERM)
            if self.kill_at is not None and now >= self.kill_at and self.killed_at is None:
                self.signal(signal.SIGKILL)
            # No sentinel after a SIGKILL: the fork server that would report it is wedged.
            if self.killed_at is not None and now >= self.killed_at + 2.0 and self.gone():
                self.exited_at = now
        return self.exited_at is not None and (
            not self.conn_open or now >= self.exited_at + EOF_GRACE_S)

    def send(self, message: FromSupervisor) -> bool:
        """Send one message; False if the pipe is closed (the process is going away)."""
        with self.send_lock:
            if not self.conn_open:
                return False
            try:
                self.conn.send(message)
            except (OSError, ValueError):
                return False
            return True

    def close_conn(self) -> None:
        with self.send_lock:
            self.conn_open = False
            self.conn.close()

    def signal(self, signum: int) -> None:
        if self.ps is not None:
            with contextlib.suppress(psutil.Error):
                self.ps.send_signal(signum)
        if signum == signal.SIGKILL and self.killed_at is None:
            self.killed_at = time.monotonic()

    def gone(self) -> bool:
        """True once the process cannot run any more (exited, zombie, or never seen)."""
        if self.exited_at is not None or wait([self.process.sentinel], 0):
            return True
        if self.ps is None:
            return True
        try:
            return self.ps.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    def sample(self) -> None:
        """Refresh RSS and CPU% (CPU% is relative to the previous sample)."""
        if self.ps is None:
            return
        with contextlib.suppress(psutil.Error), self.ps.oneshot():
            self.rss_bytes = self.ps.memory_info().rss
            self.cpu_percent = self.ps.cpu_percent(None)


def launch(
    ctx: BaseContext,
    kind: WorkerKind,
    settings: WorkerSettings,
    *,
    generation: int,
) -> tuple[WorkerProcess, Connection]:
    """Start a worker process; returns it and the read end of its log pipe.

    The parent's copies of the child's pipe ends are closed at once, so the child's death
    is seen as EOF. ``Start`` is not sent here.
    """
    conn, child_conn = ctx.Pipe(duplex=True)
    # A frozen worker never drains its pipe: a send must fail rather than block the caller.
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", *_SEND_TIMEOUT))
    log_r, log_w = ctx.Pipe(duplex=False)
    spec = loop.WorkerSpec(
        name=kind.name,
        target=kind.target,
        supervisor_pid=os.getpid(),
        start_method=ctx.get_start_method(),
        conn=child_conn,
        log_conn=log_w,
        log_level=settings.log_level,
        log_json=settings.log_format_json,
    )
    process = ctx.Process(target=loop.main, args=(spec,), name=kind.name, daemon=True)
    try:
        process.start()
    except BaseException:
        for c in (conn, log_r):
            c.close()
        raise
    finally:
        child_conn.close()
        log_w.close()
    try:
        ps: psutil.Process | None = psutil.Process(process.pid)
    except psutil.Error:
        ps = None  # already dead: the sentinel will tell
    worker = WorkerProcess(kind=kind.name, process=process, conn=conn, ps=ps,
                           started_at=time.monotonic(), generation=generation)
    return worker, log_r


def describe_exit(code: int | None) -> tuple[str, str]:
    """``(reason, category)`` for an exit code (negative: killed by that signal)."""
    if code is None:
        return "vanished", "exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}", "signal"
    return f"exit {code}", "exit"
