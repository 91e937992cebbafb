"""A point-in-time picture of the whole agent pod, for /health, /metrics and the CLI.

The supervisor assembles it from the elector, the worker pool, the checkpointer and its own
loops; the health server only renders it. Plain frozen dataclasses: no secrets ever go in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["AgentStatus", "LoopStatus", "WorkerStatus"]


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker kind as the supervisor sees it."""

    kind: str
    state: str
    """starting | running | backoff | stopping | stopped"""
    pid: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_reason: str = ""
    """e.g. "exit 1", "heartbeat missed", "memory limit", "Failed: <reason>"."""
    heartbeat_age_s: float | None = None
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    healthy: bool = True
    detail: str = ""
    stats: Mapping[str, float] = field(default_factory=dict)
    """Counters the worker reports in its heartbeats (events delivered, payloads, ...)."""
    gauges: Mapping[str, float] = field(default_factory=dict)
    """Current values the worker reports (e.g. intake_forbidden)."""


@dataclass(frozen=True, slots=True)
class LoopStatus:
    """One of the supervisor's own loops; liveness fails if one stops ticking."""

    name: str
    tick_age_s: float
    max_age_s: float

    @property
    def stuck(self) -> bool:
        return self.tick_age_s > self.max_age_s


@dataclass(frozen=True, slots=True)
class AgentStatus:
    identity: str
    version: str
    leader_election: bool
    is_leader: bool
    """With leader election off, always true (the replica runs the workers)."""
    holder: str = ""
    lock: str = ""
    lease_age_s: float | None = None
    leader_transitions: int = 0
    renew_latency_s: float | None = None
    api_contact_age_s: float | None = None
    """Seconds since the API server last answered this supervisor (None: never)."""
    ready_after_s: float = 60.0
    """/ready fails when the API server has not answered for longer than this."""
    config_loaded: bool = True
    last_reload_ok: bool | None = None
    """None: no reload yet."""
    last_reload_error: str = ""
    last_reload_age_s: float | None = None
    token: str | None = None
    token_timestamp: str | None = None
    token_persisted: str | None = None
    checkpoint_writes: int = 0
    checkpoint_failures: int = 0
    checkpoint_last_ok: bool | None = None
    """Result of the last ConfigMap write attempt (None: none yet). False makes the
    ``checkpoint`` health component Unhealthy (counts alone cannot say whether it recovered)."""
    loops: tuple[LoopStatus, ...] = ()
    workers: tuple[WorkerStatus, ...] = ()
    election_requests: Mapping[str, int] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        """Only the supervisor's own loops count: a crash-looping worker must not get the pod
        restarted (that would drop the lease for nothing)."""
        return not any(loop.stuck for loop in self.loops)

    @property
    def ready(self) -> bool:
        return (
            self.config_loaded
            and self.api_contact_age_s is not None
            and self.api_contact_age_s <= self.ready_after_s
        )
