"""Logging of the whole pod: set up once in the supervisor, the only writer of stderr.

The supervisor logs through loguru with ``enqueue=True`` (its threads never write stderr
themselves). Each worker formats its own records (same format, its own level, see
``workers.logcontrol``) and sends them over its own log pipe; a ``LogForwarder`` thread
copies them into the supervisor's handler, so every line arrives whole, names its process,
and lines of one process stay in order. A worker killed mid-line loses at most that line.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterable
from multiprocessing.connection import Connection, wait
from typing import TextIO

from loguru import logger

from workers import logcontrol

__all__ = ["LogForwarder", "configure", "flush", "setup_logging"]

SUPERVISOR_NAME = "supervisor"


def setup_logging(
    *,
    level: str = "INFO",
    json: bool = False,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Replace loguru's handlers with the pod's single stderr handler.

    ``secrets`` (the API key, proxy passwords) are masked in any line that still contains
    one; the rule remains never to log them.
    """
    multiprocessing.current_process().name = SUPERVISOR_NAME
    logcontrol.install(stream or sys.stderr, level=level, json=json, secrets=secrets,
                       enqueue=True)


def configure(
    *, level: str | None = None, json: bool | None = None, secrets: Iterable[str] | None = None
) -> None:
    """Change the supervisor's level/format/secrets at once (workers get ``Reload``)."""
    logcontrol.configure(level=level, json=json, secrets=secrets)


def flush() -> None:
    """Wait until every queued line is written (before exit)."""
    logger.complete()


class LogForwarder:
    """Copies the lines workers send over their log pipes into the supervisor's log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[Connection, str] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-forwarder", daemon=True)
        self._thread.start()

    def attach(self, name: str, conn: Connection) -> None:
        """Forward what arrives on ``conn`` until its EOF (the worker's exit)."""
        with self._lock:
            if self._closed:
                conn.close()
                return
            self._conns[conn] = name
        self._wake()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop forwarding (lines still in the pipes are dropped after ``timeout_s``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        self._thread.join(timeout_s)
        with self._lock:
            if not self._thread.is_alive():
                for fd in (self._wake_r, self._wake_w):
                    os.close(fd)
                self._wake_r = self._wake_w = -1

    def pending(self) -> int:
        """Log pipes still open (workers alive or lines not yet read)."""
        with self._lock:
            return len(self._conns)

    def _wake(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError):
            if self._wake_w >= 0:  # never write to a closed (maybe reused) fd
                os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while True:
            with self._lock:
                closed = self._closed
                conns = list(self._conns)
            if closed and not conns:
                return
            # Once closed, drain what is already there, then give up on silent pipes.
            ready = wait([self._wake_r, *conns], 0.2 if closed else None)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            for conn in conns:
                if conn in ready:
                    self._forward(conn)
            if closed and not ready:
                return

    def _forward(self, conn: Connection) -> None:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            with self._lock:
                self._conns.pop(conn, None)
            conn.close()
            return
        line = data.decode("utf-8", "replace")
        # Already filtered and formatted by the worker: written verbatim (masked again).
        logger.bind(_forwarded=True).opt(raw=True).log("INFO", line)
