"""The pipe protocol between the supervisor and a worker process.

Small frozen dataclasses, pickled over a ``multiprocessing`` duplex ``Pipe``:

    supervisor -> worker:  Start(settings, token) · Reload(settings) · Stop(grace_s)
    worker -> supervisor:  Heartbeat(at, stats, ...) · Progress(token) · Failed(reason)

The worker never writes cluster state: ``Progress`` carries a token the intake has
acknowledged (2xx) and the supervisor alone decides when to persist it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from workers.settings import WorkerSettings

__all__ = [
    "Failed",
    "FromSupervisor",
    "FromWorker",
    "Heartbeat",
    "Progress",
    "Reload",
    "Start",
    "Stop",
    "Token",
]


@dataclass(frozen=True, slots=True)
class Token:
    """How far the cluster's Events have been delivered.

    ``resource_version`` is the watch position (ConfigMap key ``event.tokenKey``);
    ``timestamp`` the newest acknowledged event time (``event.tokenTimestamp``), used
    after a 410 Gone to tell new events from old ones when resourceVersions cannot.
    """

    resource_version: str
    timestamp: datetime | None = None

    def is_newer_than(self, other: Token | None) -> bool:
        """True if this token is ahead of ``other`` (resourceVersions compare as integers).

        Kubernetes calls resourceVersions opaque, but etcd-backed servers issue increasing
        integers and the Datadog Agent relies on that too; a non-integer never advances.
        """
        if other is None:
            return True
        try:
            return int(self.resource_version) > int(other.resource_version)
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class Start:
    """First message to a new worker: what to do and where to resume."""

    settings: WorkerSettings
    token: Token | None


@dataclass(frozen=True, slots=True)
class Reload:
    """Settings changed in a way the worker applies without a restart (e.g. log level)."""

    settings: WorkerSettings


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish the in-flight batch if it fits in ``grace_s`` seconds, then exit 0."""

    grace_s: float


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent every ``heartbeat_interval``; a worker silent for 3 intervals is replaced.

    ``at`` is ``time.monotonic()`` (one clock for every process on the host). ``stats``
    are monotonically increasing counters forwarded to /metrics. ``healthy`` false with a
    ``detail`` marks a worker that runs but cannot do its job (e.g. the intake answered
    403: invalid API key).
    """

    at: float
    stats: Mapping[str, float] = field(default_factory=dict)
    healthy: bool = True
    detail: str = ""
    gauges: Mapping[str, float] = field(default_factory=dict)
    """Current values (e.g. intake_forbidden), exported as gauges rather than counters."""


@dataclass(frozen=True, slots=True)
class Progress:
    """The intake acknowledged everything up to ``token`` (or a bookmark moved it)."""

    token: Token


@dataclass(frozen=True, slots=True)
class Failed:
    """The worker gives up (it exits right after); the supervisor restarts it with backoff."""

    reason: str


FromSupervisor = Start | Reload | Stop
FromWorker = Heartbeat | Progress | Failed
