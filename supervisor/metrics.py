"""Prometheus metrics for /metrics, rendered from an ``AgentStatus`` at scrape time.

One custom collector on a private ``CollectorRegistry``: nothing global, no multiprocess mode.
Workers never export metrics themselves; their counters ride the heartbeats over the pipes and
the supervisor's status carries them here, so a scrape sees every process of the pod at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from supervisor.status import AgentStatus, WorkerStatus

__all__ = ["PREFIX", "WORKER_STATES", "StatusCollector", "metrics_registry", "stat_family"]

PREFIX = "kube_event_agent_"
WORKER_STATES = ("starting", "running", "backoff", "stopping", "stopped")

# Families this module emits under kube_event_agent_worker_*: a worker stat that sanitises to
# one of these gets a ``stat_`` infix instead, so no two families ever share a name.
_WORKER_FAMILIES = frozenset({
    "restarts", "up", "healthy", "state", "rss_bytes", "cpu_percent", "heartbeat_age_seconds",
    "last_exit_code",
})
_INVALID = re.compile(r"[^a-zA-Z0-9_]+")


def stat_family(stat: str) -> str | None:
    """The counter family for a worker stat (``events.sent`` → ``..._worker_events_sent``;
    samples get ``_total``); None if nothing usable is left of the name."""
    name = _INVALID.sub("_", stat).strip("_").lower()
    name = re.sub(r"_+", "_", name).removesuffix("_total")
    if not name:
        return None
    if name in _WORKER_FAMILIES:
        name = f"stat_{name}"
    return f"{PREFIX}worker_{name}"


class StatusCollector:
    """Reads the status once per scrape; ``status`` may raise (the scrape then fails)."""

    def __init__(self, status: Callable[[], AgentStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield from _agent_metrics(status)
        yield from _worker_metrics(status.workers)
        yield from _stat_metrics(status.workers)


def metrics_registry(status: Callable[[], AgentStatus]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return registry


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(PREFIX + name, doc, value=float(value))


def _agent_metrics(s: AgentStatus) -> Iterator[Metric]:
    yield InfoMetricFamily(
        PREFIX.rstrip("_"), "Identity of this agent replica.",
        value={"identity": s.identity, "version": s.version, "lock": s.lock},
    )
    leader = GaugeMetricFamily(
        PREFIX + "is_leader", "1 while this replica holds the leader lock (runs the workers).",
        labels=["identity"],
    )
    leader.add_metric([s.identity], 1.0 if s.is_leader else 0.0)
    yield leader
    yield from _gauge("leader_election_enabled", "1 when leader election is on.",
                      1.0 if s.leader_election else 0.0)
    yield from _gauge("live", "1 while every supervisor loop ticks (the /live answer).",
                      1.0 if s.live else 0.0)
    yield from _gauge("ready", "1 when config is loaded and the API server answered recently.",
                      1.0 if s.ready else 0.0)
    # leaderTransitions is read from the lock record, not counted here: a gauge.
    yield from _gauge("leader_transitions", "leaderTransitions of the lock record.",
                      s.leader_transitions)
    yield from _gauge("renew_latency_seconds", "Duration of the last lease renewal.",
                      s.renew_latency_s)
    yield from _gauge("lease_age_seconds", "Seconds since the lock record last changed.",
                      s.lease_age_s)
    # Never contacted is an infinite age, so one `> N` alert covers both cases.
    yield from _gauge("api_contact_age_seconds", "Seconds since the API server last answered.",
                      math.inf if s.api_contact_age_s is None else s.api_contact_age_s)
    requests = CounterMetricFamily(
        PREFIX + "election_requests", "Lock API requests by verb.", labels=["verb"],
    )
    for verb, count in sorted(s.election_requests.items()):
        requests.add_metric([verb], float(count))
    yield requests
    yield CounterMetricFamily(PREFIX + "checkpoint_writes", "Token ConfigMap writes.",
                              value=float(s.checkpoint_writes))
    yield CounterMetricFamily(PREFIX + "checkpoint_failures", "Failed token ConfigMap writes.",
                              value=float(s.checkpoint_failures))
    # Like prometheus_config_last_reload_successful: the initial load counts as success.
    yield from _gauge("config_last_reload_successful", "0 after a SIGHUP reload was rejected.",
                      0.0 if s.last_reload_ok is False else 1.0)
    ticks = GaugeMetricFamily(PREFIX + "loop_tick_age_seconds",
                              "Seconds since each supervisor loop last ticked.", labels=["loop"])
    for loop in s.loops:
        ticks.add_metric([loop.name], loop.tick_age_s)
    yield ticks


def _worker_metrics(workers: tuple[WorkerStatus, ...]) -> Iterator[Metric]:
    kind = ["kind"]
    restarts = CounterMetricFamily(PREFIX + "worker_restarts", "Worker restarts.", labels=kind)
    up = GaugeMetricFamily(PREFIX + "worker_up", "1 while the worker process exists.",
                           labels=kind)
    healthy = GaugeMetricFamily(PREFIX + "worker_healthy",
                                "0 while the worker reports it cannot do its job.", labels=kind)
    state = GaugeMetricFamily(PREFIX + "worker_state", "1 for the worker's current state.",
                              labels=["kind", "state"])
    rss = GaugeMetricFamily(PREFIX + "worker_rss_bytes", "Worker resident set size.",
                            labels=kind)
    cpu = GaugeMetricFamily(PREFIX + "worker_cpu_percent", "Worker CPU use (100 = one core).",
                            labels=kind)
    beat = GaugeMetricFamily(PREFIX + "worker_heartbeat_age_seconds",
                             "Seconds since the worker's last heartbeat.", labels=kind)
    exit_code = GaugeMetricFamily(PREFIX + "worker_last_exit_code",
                                  "Exit code of the worker's last process.", labels=kind)
    for w in workers:
        restarts.add_metric([w.kind], float(w.restarts))
        alive = w.pid is not None and w.state in ("starting", "running", "stopping")
        up.add_metric([w.kind], 1.0 if alive else 0.0)
        healthy.add_metric([w.kind], 1.0 if w.healthy else 0.0)
        for name in WORKER_STATES:
            state.add_metric([w.kind, name], 1.0 if w.state == name else 0.0)
        for family, value in ((rss, w.rss_bytes), (cpu, w.cpu_percent),
                              (beat, w.heartbeat_age_s), (exit_code, w.last_exit_code)):
            if value is not None:
                family.add_metric([w.kind], float(value))
    yield from (restarts, up, healthy, state, rss, cpu, beat, exit_code)


def _stat_metrics(workers: tuple[WorkerStatus, ...]) -> Iterator[Metric]:
    families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
    for w in workers:
        seen: set[str] = set()
        for values, gauge in ((w.stats, False), (w.gauges, True)):
            for stat, value in _numeric(values):
                name = stat_family(stat)
                # Two stats of one worker that sanitise alike: keep the first, never twice.
                if name is None or name in seen:
                    continue
                seen.add(name)
                family = families.get(name)
                if family is None:
                    family = families[name] = (
                        GaugeMetricFamily(name, f"Worker value {stat!r} from heartbeats.",
                                          labels=["kind"])
                        if gauge else
                        CounterMetricFamily(name, f"Worker counter {stat!r} from heartbeats.",
                                            labels=["kind"])
                    )
                if isinstance(family, GaugeMetricFamily) != gauge:
                    continue  # the same name used as counter by one kind, gauge by another
                family.add_metric([w.kind], value)
    yield from families.values()


def _numeric(stats: Mapping[str, float]) -> Iterator[tuple[str, float]]:
    for stat, value in sorted(stats.items(), key=lambda item: str(item[0])):
        if isinstance(value, int | float) and math.isfinite(value):
            yield str(stat), float(value)
