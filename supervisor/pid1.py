"""PID-1 duties of the supervisor, and the multiprocessing helper processes it must respect.

As PID 1 of its container the supervisor inherits every orphan and must reap it, but it must
not steal an exit status that code of its own will wait for: multiprocessing waits for the
fork server and the resource tracker by pid (a stolen status makes its next
``ensure_running`` fail for good), and for ``spawn`` children. Exited children are peeked at
with ``WNOWAIT`` and only the others are reaped.

The pids of the fork server and resource tracker are private attributes of CPython's
``multiprocessing`` (checked on 3.11-3.13); they are read here and nowhere else.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Collection
from multiprocessing import forkserver, resource_tracker

import psutil
from loguru import logger

__all__ = [
    "OrphanReaper",
    "forkserver_pid",
    "forward_signal",
    "helper_pids",
    "reap_orphans",
    "stop_helpers",
    "waited_for_pids",
]


def forkserver_pid() -> int | None:
    """The fork server this process started, if any (alive or not yet waited for)."""
    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def helper_pids() -> set[int]:
    """multiprocessing's own helper processes: fork server and resource tracker."""
    found = {forkserver_pid(), getattr(resource_tracker._resource_tracker, "_pid", None)}
    return {pid for pid in found if pid is not None}


def waited_for_pids() -> set[int]:
    """Children whose exit status some code of this process collects itself."""
    return helper_pids() | {p.pid for p in multiprocessing.active_children() if p.pid}


def reap_orphans(
    protected: Callable[[], Collection[int]] = waited_for_pids,
) -> list[tuple[int, int]]:
    """Reap exited children that nobody else waits for; returns ``(pid, exit code)`` each."""
    try:
        peek = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return []
    if peek is None:
        return []
    # waitid(P_ALL) shows one zombie only, maybe a protected one: look at them all.
    keep = set(protected())
    reaped = []
    for child in psutil.Process().children():
        if child.pid in keep:
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue
        if pid:
            reaped.append((pid, os.waitstatus_to_exitcode(status)))
    return reaped


def forward_signal(signum: int = signal.SIGTERM, *, spare: Collection[int] | None = None
                   ) -> list[int]:
    """Send ``signum`` to every descendant except multiprocessing's helpers.

    The fork server is spared: its death SIGKILLs the workers (their parent-death signal)
    instead of letting them finish. Stop the worker pool first; this is the final sweep.
    """
    spare = helper_pids() if spare is None else spare
    sent = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in spare:
            continue
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signum)
            sent.append(proc.pid)
    return sent


def stop_helpers(timeout_s: float = 2.0) -> bool:
    """End the idle fork server and resource tracker: a follower should not keep them.

    Call only when no worker runs (the next worker start launches both again). Each gets
    SIGKILL (neither holds state we need) and, once a zombie, is reaped by multiprocessing's
    own ``_stop`` so that it forgets it. False if one would not die in time.
    """
    ok = True
    for server in (forkserver._forkserver, resource_tracker._resource_tracker):
        pid = getattr(server, "_forkserver_pid", getattr(server, "_pid", None))
        if pid is None:
            continue
        if not _kill_to_zombie(pid, timeout_s):
            ok = False
            continue
        try:
            server._stop()  # waitpid (immediate: a zombie), forget it, unlink its socket
        except OSError as exc:
            logger.warning("multiprocessing helper {}: {}", pid, exc)
            ok = False
    return ok


def _kill_to_zombie(pid: int, timeout_s: float) -> bool:
    try:
        proc = psutil.Process(pid)
        proc.kill()
        deadline = time.monotonic() + timeout_s
        while proc.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
    except psutil.NoSuchProcess:
        pass
    return True


class OrphanReaper:
    """A thread that reaps orphans every ``interval_s`` and whenever ``wake()`` is called.

    ``wake()`` is safe to call from a SIGCHLD handler (it only sets an event).
    """

    def __init__(
        self,
        *,
        protected: Callable[[], Collection[int]] = waited_for_pids,
        interval_s: float = 5.0,
    ) -> None:
        self._protected = protected
        self._interval_s = interval_s
        self._event = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self.reaped = 0

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._event.set()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stopped = True
        self._event.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopped:
            self._event.wait(self._interval_s)
            self._event.clear()
            try:
                for pid, code in reap_orphans(self._protected):
                    self.reaped += 1
                    logger.debug("reaped orphan {} (exit {})", pid, code)
            except Exception:  # a reaper must outlive odd /proc states
                logger.exception("reaping orphans failed")
