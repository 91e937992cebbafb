"""The worker side of the pipe protocol: the entry point of every worker process.

``main(spec)`` binds the process to the supervisor's life, installs logging, waits for
``Start`` and runs the kind's job ``run(ctx: WorkerContext) -> None`` in a thread while the
main thread reads the pipe (``Reload``, ``Stop``) and a heartbeat thread reports. Exit codes:
0 after the job returned, 1 job failed (``Failed`` sent first), 3 the job ignored a stop,
4 supervisor gone, 5 born orphaned.

How a worker never outlives its supervisor, even SIGSTOPped: its parent is the fork server
(``forkserver``) or the supervisor itself (``spawn``), and it dies with that parent
(``PR_SET_PDEATHSIG``); the fork server exits when the supervisor is gone because no worker
keeps its "alive" pipe open (``_drop_forkserver_alive_fd``). A live worker also exits on the
EOF of its pipe and when the supervisor's pidfd says it died.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import psutil
from loguru import logger

from workers import logcontrol
from workers.protocol import (
    Failed,
    FromWorker,
    Heartbeat,
    Progress,
    Reload,
    Start,
    Stop,
    Token,
)
from workers.registry import load_target
from workers.settings import WorkerSettings

__all__ = ["WorkerContext", "WorkerSpec", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STOP_TIMEOUT = 3
EXIT_ORPHANED = 4
EXIT_WRONG_PARENT = 5
SIGTERM_GRACE_S = 10.0
"""Grace for a SIGTERM that did not come with a ``Stop`` (the supervisor sends both)."""
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a new worker process gets as its ``Process`` argument."""

    name: str
    target: str
    supervisor_pid: int
    start_method: str
    conn: Connection
    """This worker's end of its duplex command pipe."""
    log_conn: Connection
    """Write end of this worker's log pipe; the supervisor writes the lines to stderr."""
    log_level: str = "INFO"
    log_json: bool = False


class _Channel:
    """The worker's end of the pipe; several threads send, one at a time."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, message: FromWorker) -> bool:
        with self._lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                return False  # supervisor gone: the main thread sees EOF and exits
            return True


class WorkerContext:
    """What a job sees of its process: settings, start token, stop flag, reporting."""

    def __init__(
        self, *, name: str, settings: WorkerSettings, token: Token | None, channel: _Channel
    ) -> None:
        self.name = name
        self.token = token
        """Where to resume: the last token the intake acknowledged (None: start from now)."""
        self.stopping = threading.Event()
        """Set on ``Stop`` or SIGTERM: finish the in-flight batch and return."""
        self._settings = settings
        self._channel = channel
        self._lock = threading.Lock()
        self._stats: dict[str, float] = {}
        self._gauges: dict[str, float] = {}
        self._healthy = True
        self._detail = ""

    @property
    def settings(self) -> WorkerSettings:
        """The current settings (a ``Reload`` replaces them)."""
        return self._settings

    def progress(self, token: Token) -> None:
        """Report ``token`` as acknowledged: only after an intake 2xx or a bookmark."""
        self._channel.send(Progress(token))

    def count(self, key: str, n: float = 1.0) -> None:
        """Add ``n`` to counter ``key`` (reported in heartbeats; /metrics counters)."""
        with self._lock:
            self._stats[key] = self._stats.get(key, 0.0) + n

    def total(self, key: str, value: float) -> None:
        """Set counter ``key`` to a running total kept elsewhere (e.g. the intake's)."""
        with self._lock:
            self._stats[key] = float(value)

    def gauge(self, key: str, value: float) -> None:
        """Set stat ``key`` to ``value`` (reported in heartbeats)."""
        with self._lock:
            self._gauges[key] = float(value)

    def set_health(self, healthy: bool, detail: str = "") -> None:
        """Running but unable to do the job (e.g. intake 403) is ``healthy=False``."""
        with self._lock:
            self._healthy = healthy
            self._detail = logcontrol.mask(detail)

    def _heartbeat(self) -> Heartbeat:
        with self._lock:
            return Heartbeat(at=time.monotonic(), stats=dict(self._stats),
                             gauges=dict(self._gauges),
                             healthy=self._healthy, detail=self._detail)

    def _reload(self, settings: WorkerSettings) -> None:
        self._settings = settings


def main(spec: WorkerSpec) -> None:
    """Process target: run one worker to the end, then exit with its code."""
    # Objects inherited from the fork server are never collected here: without this the
    # first full collection writes to every one of them and un-shares their pages.
    gc.freeze()
    _bind_to_supervisor(spec)
    _name_process(spec.name)
    logcontrol.install(logcontrol.PipeSink(spec.log_conn), level=spec.log_level,
                       json=spec.log_json)
    code = _Worker(spec).run()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: a stuck job thread must not delay the exit


def _prctl(option: int, value: int | bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    arg = value if isinstance(value, bytes) else ctypes.c_ulong(value)
    if libc.prctl(option, arg, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _bind_to_supervisor(spec: WorkerSpec) -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if spec.start_method == "forkserver":
        _drop_forkserver_alive_fd()
    # The parent may have died before prctl: then no signal will ever come.
    if not _parent_is_expected(spec):
        os._exit(EXIT_WRONG_PARENT)


def _drop_forkserver_alive_fd() -> None:
    """Close the inherited write end of the fork server's "alive" pipe.

    CPython hands it to every forkserver child so that children may start processes too;
    the fork server exits only when *all* copies are closed. A worker keeping it would keep
    the fork server, hence itself, alive after the supervisor's death.
    """
    from multiprocessing import forkserver  # only forkserver children

    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None


def _parent_is_expected(spec: WorkerSpec) -> bool:
    ppid = os.getppid()
    if spec.start_method != "forkserver":
        return ppid == spec.supervisor_pid
    # Our parent is the fork server, a child of the supervisor. Once it is dead we belong
    # to a reaper: PID 1 or a subreaper, possibly the supervisor itself.
    if ppid == spec.supervisor_pid:
        return False
    try:
        return psutil.Process(ppid).ppid() == spec.supervisor_pid
    except psutil.Error:
        return False


def _name_process(name: str) -> None:
    multiprocessing.current_process().name = name
    with contextlib.suppress(OSError):
        _prctl(_PR_SET_NAME, name.encode()[:15])  # what ps, top and psutil.name() show
    try:
        import setproctitle  # type: ignore[import-not-found]
    except ImportError:
        return
    setproctitle.setproctitle(f"kube-event-agent: {name}")


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(EXIT_ORPHANED)
    except OSError:
        return None  # old kernel: pipe EOF and PDEATHSIG still end us


class _Worker:
    """The main thread's loop of one worker process."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.channel = _Channel(spec.conn)
        self.ctx: WorkerContext | None = None
        self.settings: WorkerSettings | None = None
        self.stop_deadline: float | None = None
        self.failure: BaseException | None = None
        self.beat = threading.Event()
        self.supervisor_fd = _open_pidfd(spec.supervisor_pid)
        self.signal_r, signal_w = os.pipe()
        self.done_r, self.done_w = os.pipe()
        for fd in (self.signal_r, signal_w):
            os.set_blocking(fd, False)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the whole process group
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload is the supervisor's business
        signal.signal(signal.SIGTERM, lambda *_: None)  # handled in run() via the wakeup fd
        signal.set_wakeup_fd(signal_w)

    def run(self) -> int:
        waitables: list[object] = [self.spec.conn, self.signal_r, self.done_r]
        if self.supervisor_fd is not None:
            waitables.append(self.supervisor_fd)
        while True:
            timeout = None
            if self.stop_deadline is not None:
                timeout = max(0.0, self.stop_deadline - time.monotonic())
            ready = wait(waitables, timeout)
            if self.supervisor_fd in ready:
                return EXIT_ORPHANED
            if self.signal_r in ready and self._sigterm_received():
                code = self._begin_stop(SIGTERM_GRACE_S, "SIGTERM")
                if code is not None:
                    return code
            if self.spec.conn in ready:
                code = self._receive()
                if code is not None:
                    return code
            if self.done_r in ready:
                return self._job_done()
            if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                logger.error("job did not return within the stop grace; exiting")
                return EXIT_STOP_TIMEOUT

    def _sigterm_received(self) -> bool:
        with contextlib.suppress(BlockingIOError):
            return signal.SIGTERM in os.read(self.signal_r, 512)
        return False

    def _receive(self) -> int | None:
        try:
            message = self.spec.conn.recv()
        except (EOFError, OSError):
            return EXIT_ORPHANED  # the supervisor is gone; nobody can take our progress
        match message:
            case Start(settings=settings, token=token):
                self._start(settings, token)
            case Reload(settings=settings):
                self._apply(settings)
                if self.ctx is not None:
                    self.ctx._reload(settings)
                self.beat.set()
            case Stop(grace_s=grace_s):
                return self._begin_stop(grace_s, "Stop")
            case _:
                logger.warning("ignoring unexpected message {!r}", type(message).__name__)
        return None

    def _apply(self, settings: WorkerSettings) -> None:
        self.settings = settings
        logcontrol.configure(level=settings.log_level, json=settings.log_format_json,
                             secrets=logcontrol.secrets_of(settings))

    def _start(self, settings: WorkerSettings, token: Token | None) -> None:
        if self.ctx is not None:
            logger.warning("ignoring a second Start")
            return
        self._apply(settings)
        self.ctx = ctx = WorkerContext(name=self.spec.name, settings=settings, token=token,
                                       channel=self.channel)
        threading.Thread(target=self._heartbeats, args=(ctx,), name="heartbeat",
                         daemon=True).start()
        threading.Thread(target=self._job, args=(ctx,), name="job", daemon=True).start()
        logger.info("worker started (token {})", token.resource_version if token else "none")

    def _begin_stop(self, grace_s: float, why: str) -> int | None:
        if self.ctx is None:
            return EXIT_OK  # nothing started, nothing to finish
        if self.stop_deadline is None:
            logger.info("stopping on {} (grace {:.1f} s)", why, grace_s)
            self.stop_deadline = time.monotonic() + grace_s
            self.ctx.stopping.set()
        return None

    def _job(self, ctx: WorkerContext) -> None:
        try:
            job: Callable[[WorkerContext], None] = load_target(self.spec.target)
            job(ctx)
        except BaseException as exc:  # reported as Failed, then exit 1
            self.failure = exc
        finally:
            os.write(self.done_w, b"x")

    def _job_done(self) -> int:
        if self.failure is not None:
            exc = self.failure
            reason = logcontrol.mask(f"{type(exc).__name__}: {exc}")[:500]
            logger.opt(exception=exc).error("job failed: {}", reason)
            self.channel.send(Failed(reason))
            return EXIT_FAILED
        if self.ctx is not None and not self.ctx.stopping.is_set():
            logger.warning("job returned without being asked to stop")
        return EXIT_OK

    def _heartbeats(self, ctx: WorkerContext) -> None:
        while self.channel.send(ctx._heartbeat()):
            self.beat.wait(ctx.settings.heartbeat_interval_s)
            self.beat.clear()
