"""What a worker needs to know, and nothing more: built by the supervisor from its config.

Workers never import the supervisor; the supervisor maps its validated configuration onto
these frozen dataclasses and sends them in ``Start`` / ``Reload`` messages. Secrets are
excluded from ``repr`` so that a logged settings object never leaks the API key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ControlPlaneSettings",
    "EventSettings",
    "EventTypeSelector",
    "IntakeSettings",
    "KubeSettings",
    "WorkerSettings",
]


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """How to reach the API server."""

    kubeconfig_path: str = ""
    """Empty: in-cluster service account first, then ``KUBECONFIG`` / ``~/.kube/config``."""
    client_timeout_s: float = 10.0
    """Per-request timeout for non-watch calls (``kubernetes_apiserver_client_timeout``)."""


@dataclass(frozen=True, slots=True)
class IntakeSettings:
    """Where Datadog payloads go."""

    api_key: str = field(default="", repr=False)
    """Empty: no intake; payloads are written to stdout as JSON lines instead."""
    site: str = "datadoghq.com"
    dd_url: str = ""
    """Overrides the URL derived from ``site`` (e.g. a local intake in tests)."""
    proxy_http: str = field(default="", repr=False)
    proxy_https: str = field(default="", repr=False)
    """Proxy URLs may carry credentials, hence hidden from repr."""
    no_proxy: tuple[str, ...] = ()
    hostname: str = ""
    """``internalHostname`` of payloads and ``host_name`` of service checks."""
    tags: tuple[str, ...] = ()
    """Global tags added to every event and service check."""
    timeout_s: float = 20.0


@dataclass(frozen=True, slots=True)
class EventTypeSelector:
    """One entry of ``collected_event_types``: an event is collected if any entry matches.

    Empty fields match anything, as in the Datadog Agent's kubernetes_apiserver check.
    """

    kind: str = ""
    source: str = ""
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EventSettings:
    """The event puller's job."""

    unbundle: bool = False
    """One Datadog event per Kubernetes event instead of one per involved object."""
    filtered_event_types: tuple[str, ...] = ()
    """Field-selector terms sent to the server, e.g. ``reason!=FailedMount``."""
    collected_event_types: tuple[EventTypeSelector, ...] = ()
    max_age_s: int = 0
    """With no token, replay events younger than this (0: start from now, as Datadog)."""
    batch_max_events: int = 500
    batch_max_bytes: int = 2 * 1024 * 1024
    flush_interval_s: float = 1.0
    """Longest an event waits in a partly filled batch before it is sent."""
    watch_timeout_s: int = 300
    """Server-side ``timeoutSeconds`` of each watch stream; it is re-opened after."""
    inactivity_timeout_s: float = 120.0
    """Client-side read timeout on a watch stream (bookmarks arrive well within it)."""


@dataclass(frozen=True, slots=True)
class ControlPlaneSettings:
    """The control-plane checker's job."""

    interval_s: float = 15.0
    use_readyz: bool = False
    """Skip componentstatuses (deprecated) and read /readyz and /livez directly."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything a worker process is told by the supervisor."""

    kube: KubeSettings = field(default_factory=KubeSettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    events: EventSettings = field(default_factory=EventSettings)
    controlplane: ControlPlaneSettings = field(default_factory=ControlPlaneSettings)
    heartbeat_interval_s: float = 5.0
    """A worker silent for three intervals is killed and restarted."""
    log_level: str = "INFO"
    log_format_json: bool = False
