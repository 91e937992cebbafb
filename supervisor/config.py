"""The agent's configuration: ``datadog.yaml`` overlaid by ``DD_<KEY>``, validated once.

Keys and spellings follow the Datadog Agent, so one ``datadog.yaml`` (or one set of pod
environment variables) can serve both. ``load_config`` returns the frozen ``AgentConfig``
with where each value came from and one-line warnings; any invalid value raises
``ConfigError`` whose text is one line naming the file, the key (or ``DD_*`` variable) and
the reason, never a secret's value.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, model_validator

from supervisor import config_values as v
from supervisor.config_values import scrub_api_key, scrub_url
from workers.settings import (
    ControlPlaneSettings,
    EventSettings,
    IntakeSettings,
    KubeSettings,
    WorkerSettings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "KEYS",
    "SA_NAMESPACE_PATH",
    "AgentConfig",
    "ConfigError",
    "LoadedConfig",
    "ProxyConfig",
    "Source",
    "enabled_worker_kinds",
    "env_name",
    "load_config",
    "loguru_level",
    "resolved",
    "scrub_api_key",
    "scrub_url",
    "scrubbed",
    "worker_settings",
]

DEFAULT_CONFIG_PATH = "/etc/datadog-agent/datadog.yaml"
SA_NAMESPACE_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
SHORT_LEASE_S = 30
"""Below this a slow API server can cost the lease; tests use 1-3 s on purpose."""
MAX_SHUTDOWN_TIMEOUT_S = 30
"""Kubernetes' default terminationGracePeriodSeconds: the hand-over must finish before KILL."""

Source = Literal["default", "file", "env", "derived"]

# DD_* variables the Datadog Agent itself uses outside its config keys (unified service
# tagging, CI): present in many pods, so not worth a warning.
_FOREIGN_DD_ENV = frozenset({"DD_ENV", "DD_SERVICE", "DD_VERSION", "DD_INSIDE_CI"})

_LOGURU_LEVELS = {
    "trace": "TRACE",
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
    "off": "OFF",
}


class ConfigError(Exception):
    """Invalid configuration; ``str()`` is one line: ``<file>: <key>: <reason>``."""


class _KeyedError(ValueError):
    """A cross-field violation, reported against ``key``."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key


class ProxyConfig(BaseModel):
    """``proxy:`` in datadog.yaml; ``DD_PROXY_HTTP``, ``DD_PROXY_HTTPS``, ``DD_PROXY_NO_PROXY``."""

    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    http: v.ProxyURL = SecretStr("")
    https: v.ProxyURL = SecretStr("")
    """Datadog traffic is HTTPS, so this is the one the intake uses."""
    no_proxy: v.StrList = ()


class AgentConfig(BaseModel):
    """Every setting of the agent, validated; Datadog Agent key names."""

    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    api_key: v.SecretText = SecretStr("")
    """Empty: payloads go to stdout as JSON lines (the local default)."""
    site: v.Site = "datadoghq.com"
    dd_url: v.HttpURL = ""
    """Overrides the intake URL derived from ``site``."""
    hostname: v.Hostname = ""
    """Empty in the file: the OS host name (the loader fills it in)."""
    tags: v.StrList = ()
    proxy: ProxyConfig = ProxyConfig()
    pod_name: v.Text = ""
    """Identity of this replica in the lock (``DD_POD_NAME`` from the downward API)."""
    collect_kubernetes_events: v.DatadogBool = False
    collect_controlplane_checks: v.DatadogBool = False
    """Defaults to true when ``KUBERNETES=true``, as Agent 6 enables its Kubernetes checks."""
    leader_election: v.DatadogBool = False
    """Forced on by event collection: two collectors would send every event twice."""
    leader_lease_duration: v.PositiveInt = 60
    leader_lease_name: v.DnsSubdomain = "datadog-leader-election"
    leader_election_resource: Annotated[str, v.choice("endpoints", "configmap", "lease")] = (
        "endpoints"
    )
    """Endpoints is what Datadog Agent 6 uses, so both agents can share one lock."""
    leader_election_release_on_shutdown: v.DatadogBool = True
    kube_resources_namespace: v.DnsLabel = "default"
    """Where the lock and ``datadogtoken`` live; the pod's own namespace when mounted."""
    kubernetes_kubeconfig_path: v.Text = ""
    kubernetes_apiserver_client_timeout: v.PositiveInt = 10
    health_port: v.Port = 5555
    log_level: Annotated[str, v.choice(*_LOGURU_LEVELS, aliases={"warn": "warning"})] = "info"
    log_format_json: v.DatadogBool = False
    forwarder_timeout: v.PositiveInt = 20
    """Seconds for one intake request (the Datadog Agent's key and default)."""
    token_checkpoint_interval: v.Seconds = 5.0
    shutdown_timeout: v.Seconds = 20.0
    """The whole hand-over on SIGTERM; must end before Kubernetes' 30 s KILL."""
    worker_heartbeat_interval: v.Seconds = 5.0
    worker_memory_limit_mb: v.PositiveInt = 256
    worker_restart_backoff_min: v.Seconds = 0.5
    worker_restart_backoff_max: v.Seconds = 30.0
    worker_stable_after: v.Seconds = 60.0
    """A worker up this long has its restart backoff reset."""
    unbundle_events: v.DatadogBool = False
    filtered_event_types: v.FieldSelectorTerms = ()
    collected_event_types: v.EventTypeSelectors = ()
    kubernetes_event_max_age: v.NonNegativeInt = 0
    event_batch_max: v.PositiveInt = 500
    event_batch_max_bytes: v.PositiveInt = 2 * 1024 * 1024
    event_flush_interval: v.Seconds = 1.0
    kubernetes_event_watch_timeout: v.PositiveInt = 300
    controlplane_check_interval: v.Seconds = 15.0
    controlplane_use_readyz: v.DatadogBool = False

    @model_validator(mode="after")
    def _consistent(self) -> AgentConfig:
        if self.shutdown_timeout >= MAX_SHUTDOWN_TIMEOUT_S:
            raise _KeyedError(
                "shutdown_timeout",
                f"must be less than {MAX_SHUTDOWN_TIMEOUT_S} s (Kubernetes' default "
                f"termination grace period), got {v.shown(self.shutdown_timeout)}",
            )
        if self.worker_restart_backoff_max < self.worker_restart_backoff_min:
            raise _KeyedError(
                "worker_restart_backoff_max",
                f"must be >= worker_restart_backoff_min ({self.worker_restart_backoff_min}), "
                f"got {self.worker_restart_backoff_max}",
            )
        if self.collect_kubernetes_events and not self.leader_election:
            raise _KeyedError(
                "leader_election", "must be true when collect_kubernetes_events is true"
            )
        return self


_PROXY_KEYS = tuple(f"proxy.{name}" for name in ProxyConfig.model_fields)
KEYS: tuple[str, ...] = tuple(
    key
    for name in AgentConfig.model_fields
    for key in (_PROXY_KEYS if name == "proxy" else (name,))
)
"""Every setting, flat: ``proxy.https`` for nested ones; the keys of ``sources``."""


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated configuration, where each value came from, and what to warn about."""

    config: AgentConfig
    sources: Mapping[str, Source]
    warnings: tuple[str, ...]
    path: str
    file_found: bool


def env_name(key: str) -> str:
    """``proxy.no_proxy`` → ``DD_PROXY_NO_PROXY``."""
    return "DD_" + key.upper().replace(".", "_")


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    sa_namespace_path: str = SA_NAMESPACE_PATH,
) -> LoadedConfig:
    """Read ``path`` (missing is fine), overlay ``environ``, validate; raise ``ConfigError``."""
    path = path or DEFAULT_CONFIG_PATH
    environ = os.environ if environ is None else environ
    raw, file_found, warnings = _read_file(path)
    sources: dict[str, Source] = dict.fromkeys(KEYS, "default")
    sources.update(dict.fromkeys(raw, "file"))
    for key in KEYS:
        # Empty counts as unset (viper's default), so `value: ""` from an optional
        # Secret in a manifest does not wipe the file's setting.
        if environ.get(env_name(key), "") != "":
            raw[key] = environ[env_name(key)]
            sources[key] = "env"
    known_env = {env_name(key) for key in KEYS} | _FOREIGN_DD_ENV
    unknown_env = sorted(
        name for name in environ if name.startswith("DD_") and name not in known_env
    )
    if unknown_env:
        warnings.append(f"unknown environment variables ignored: {', '.join(unknown_env)}")
    _derive(raw, sources, warnings, path, environ, sa_namespace_path)
    config = _validate(raw, sources, path)
    if config.leader_lease_duration < SHORT_LEASE_S:
        warnings.append(
            f"leader_lease_duration: {config.leader_lease_duration} s is under {SHORT_LEASE_S} s: "
            "fine for tests, but a slow API server may cost the lease (Datadog uses 60)"
        )
    api_key = config.api_key.get_secret_value()
    if api_key and not v.looks_like_api_key(api_key):
        warnings.append("api_key: does not look like a Datadog API key (32 hexadecimal characters)")
    return LoadedConfig(config, sources, tuple(warnings), path, file_found)


def _read_file(path: str) -> tuple[dict[str, Any], bool, list[str]]:
    """The file's known keys, flat, as YAML typed them; unknown keys become a warning."""
    try:
        with open(path, encoding="utf-8") as stream:
            document = stream.read()
    except FileNotFoundError:
        return {}, False, []
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(document)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_reason(exc)}") from None
    if data is None:
        return {}, True, []
    if not isinstance(data, dict):
        # The type only: a file holding nothing but a pasted API key must not echo it.
        kind = type(data).__name__
        raise ConfigError(f"{path}: not a YAML mapping of keys to values (got a {kind})")
    proxy = data.get("proxy")
    if proxy is not None and not isinstance(proxy, dict):
        raise ConfigError(f"{path}: proxy: must be a mapping with http, https, no_proxy")
    flat = {str(key): value for key, value in data.items() if key != "proxy"}
    flat.update({f"proxy.{sub}": value for sub, value in (proxy or {}).items()})
    known = set(KEYS)
    unknown = [key for key in flat if key not in known]
    # `key:` with nothing after it is unset, as in the Datadog Agent.
    raw = {key: value for key, value in flat.items() if key in known and value is not None}
    warnings = [f"{path}: unknown keys ignored: {', '.join(unknown)}"] if unknown else []
    return raw, True, warnings


def _yaml_reason(exc: yaml.YAMLError) -> str:
    # Only the problem and its position: str(exc) quotes the offending line, which may be
    # the one holding the API key.
    if isinstance(exc, yaml.MarkedYAMLError):
        reason = exc.problem or exc.context or "syntax error"
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            reason += f" (line {mark.line + 1}, column {mark.column + 1})"
        return reason
    return type(exc).__name__


def _derive(
    raw: dict[str, Any],
    sources: dict[str, Source],
    warnings: list[str],
    path: str,
    environ: Mapping[str, str],
    sa_namespace_path: str,
) -> None:
    """Fill the defaults that depend on the machine, and force what other keys imply."""
    try:
        kubernetes = v.parse_bool(environ.get("KUBERNETES") or "false")
    except ValueError as exc:
        raise ConfigError(f"{path}: KUBERNETES (env): {exc}") from None
    if kubernetes and "collect_controlplane_checks" not in raw:
        raw["collect_controlplane_checks"] = True
        sources["collect_controlplane_checks"] = "derived"
    for key in ("hostname", "pod_name"):
        if raw.get(key) in (None, ""):
            raw[key] = socket.gethostname()
            sources[key] = "derived"
    if raw.get("kube_resources_namespace") in (None, ""):
        namespace = _read_namespace(sa_namespace_path)
        raw["kube_resources_namespace"] = namespace or "default"
        sources["kube_resources_namespace"] = "derived" if namespace else "default"
    try:
        events = v.parse_bool(raw.get("collect_kubernetes_events", False))
        election = v.parse_bool(raw.get("leader_election", False))
    except ValueError:
        return  # validation names the bad value
    if events and not election:
        if sources["leader_election"] != "default":
            said = "DD_LEADER_ELECTION" if sources["leader_election"] == "env" else path
            warnings.append(
                "leader_election: forced on because collect_kubernetes_events is true "
                f"({said} set it to false)"
            )
        raw["leader_election"] = True
        sources["leader_election"] = "derived"


def _read_namespace(sa_namespace_path: str) -> str:
    try:
        with open(sa_namespace_path, encoding="utf-8") as stream:
            return stream.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _where(key: str, sources: Mapping[str, Source]) -> str:
    return f"{env_name(key)} (env)" if sources.get(key) == "env" else key


def _validate(raw: dict[str, Any], sources: Mapping[str, Source], path: str) -> AgentConfig:
    nested: dict[str, Any] = {key: value for key, value in raw.items() if "." not in key}
    proxy = {key.split(".", 1)[1]: value for key, value in raw.items() if key in _PROXY_KEYS}
    if proxy:
        nested["proxy"] = proxy
    try:
        return AgentConfig.model_validate(nested)
    except ValidationError as exc:
        # `from None`: the pydantic error, if printed in a traceback, would show the input.
        raise ConfigError(_one_line(exc, sources, path)) from None


def _one_line(exc: ValidationError, sources: Mapping[str, Source], path: str) -> str:
    errors = exc.errors()
    first = errors[0]
    error = first.get("ctx", {}).get("error")
    if isinstance(error, _KeyedError):
        key = error.key
    else:
        key = ".".join(str(part) for part in first["loc"][:2] if isinstance(part, str))
    reason = str(error) if isinstance(error, ValueError) else first["msg"]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{_where(key, sources)}: " if key else ""
    return f"{path}: {where}{reason}{more}"


def scrubbed(config: AgentConfig) -> dict[str, Any]:
    """Every setting as plain YAML/JSON data, secrets masked: safe to print or serve."""
    data = config.model_dump(mode="json")
    data["api_key"] = scrub_api_key(config.api_key.get_secret_value())
    data["proxy"]["http"] = scrub_url(config.proxy.http.get_secret_value())
    data["proxy"]["https"] = scrub_url(config.proxy.https.get_secret_value())
    return data


def resolved(loaded: LoadedConfig) -> dict[str, Any]:
    """``{key: {"value": scrubbed value, "source": ...}}``; ``proxy`` nests its three keys."""
    values = scrubbed(loaded.config)
    data: dict[str, Any] = {}
    for key in KEYS:
        head, _, sub = key.partition(".")
        entry = {"value": values[head][sub] if sub else values[head], "source": loaded.sources[key]}
        if sub:
            data.setdefault(head, {})[sub] = entry
        else:
            data[key] = entry
    return data


def loguru_level(log_level: str) -> str:
    """Datadog level name → loguru's; ``off`` → ``"OFF"``, which the logging setup must
    treat as "no sink" (loguru has no such level)."""
    return _LOGURU_LEVELS[log_level]


def enabled_worker_kinds(config: AgentConfig) -> tuple[str, ...]:
    """The worker processes the leader runs, in start order."""
    kinds = []
    if config.collect_kubernetes_events:
        kinds.append("events")
    if config.collect_controlplane_checks:
        kinds.append("controlplane")
    return tuple(kinds)


def worker_settings(config: AgentConfig) -> WorkerSettings:
    """What the workers are told: the config minus everything about the lease."""
    return WorkerSettings(
        kube=KubeSettings(
            kubeconfig_path=config.kubernetes_kubeconfig_path,
            client_timeout_s=float(config.kubernetes_apiserver_client_timeout),
        ),
        intake=IntakeSettings(
            api_key=config.api_key.get_secret_value(),
            site=config.site,
            dd_url=config.dd_url,
            proxy_http=config.proxy.http.get_secret_value(),
            proxy_https=config.proxy.https.get_secret_value(),
            no_proxy=config.proxy.no_proxy,
            hostname=config.hostname,
            tags=config.tags,
            timeout_s=float(config.forwarder_timeout),
        ),
        events=EventSettings(
            unbundle=config.unbundle_events,
            filtered_event_types=config.filtered_event_types,
            collected_event_types=config.collected_event_types,
            max_age_s=config.kubernetes_event_max_age,
            batch_max_events=config.event_batch_max,
            batch_max_bytes=config.event_batch_max_bytes,
            flush_interval_s=config.event_flush_interval,
            watch_timeout_s=config.kubernetes_event_watch_timeout,
        ),
        controlplane=ControlPlaneSettings(
            interval_s=config.controlplane_check_interval,
            use_readyz=config.controlplane_use_readyz,
        ),
        heartbeat_interval_s=config.worker_heartbeat_interval,
        log_level=loguru_level(config.log_level),
        log_format_json=config.log_format_json,
    )
