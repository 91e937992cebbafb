"""supervisor.config: datadog.yaml + DD_* → one validated, frozen configuration."""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from supervisor import cli
from supervisor.config import (
    DEFAULT_CONFIG_PATH,
    KEYS,
    AgentConfig,
    ConfigError,
    LoadedConfig,
    enabled_worker_kinds,
    env_name,
    load_config,
    resolved,
    scrub_api_key,
    scrub_url,
    scrubbed,
    worker_settings,
)
from workers.settings import (
    ControlPlaneSettings,
    EventSettings,
    EventTypeSelector,
    IntakeSettings,
    KubeSettings,
    WorkerSettings,
)

API_KEY = "0123456789abcdef0123456789abcdef"
OTHER_KEY = "fedcba9876543210fedcba9876543210"
PROXY_PASSWORD = "hunter2-s3cret"
HOST = socket.gethostname()
DERIVED = object()  # marker: the default comes from the machine

# key: (default, value in the file, expected, value in DD_<KEY>, expected)
TABLE: dict[str, tuple[object, object, object, str, object]] = {
    "api_key": ("", API_KEY, API_KEY, OTHER_KEY, OTHER_KEY),
    "site": ("datadoghq.com", "datadoghq.eu", "datadoghq.eu", "us3.datadoghq.com",
             "us3.datadoghq.com"),
    "dd_url": ("", "http://127.0.0.1:8080/", "http://127.0.0.1:8080", "https://intake.example",
               "https://intake.example"),
    "hostname": (DERIVED, "node-1.example", "node-1.example", "node-2", "node-2"),
    "tags": ((), ["env:prod", "team:a"], ("env:prod", "team:a"), "a:b  c:d", ("a:b", "c:d")),
    "proxy.http": ("", "http://proxy:3128", "http://proxy:3128", "http://other:3128",
                   "http://other:3128"),
    "proxy.https": ("", "http://proxy:3129", "http://proxy:3129", "https://other:443",
                    "https://other:443"),
    "proxy.no_proxy": ((), ["localhost", ".svc"], ("localhost", ".svc"), "localhost 10.0.0.0/8",
                       ("localhost", "10.0.0.0/8")),
    "pod_name": (DERIVED, "agent-abc", "agent-abc", "agent-xyz", "agent-xyz"),
    "collect_kubernetes_events": (False, True, True, "yes", True),
    "collect_controlplane_checks": (False, True, True, "on", True),
    "leader_election": (False, True, True, "1", True),
    "leader_lease_duration": (60, 45, 45, "90", 90),
    "leader_lease_name": ("datadog-leader-election", "my-lock", "my-lock", "other.lock",
                          "other.lock"),
    "leader_election_resource": ("endpoints", "lease", "lease", "ConfigMap", "configmap"),
    "leader_election_release_on_shutdown": (True, False, False, "off", False),
    "kube_resources_namespace": ("default", "monitoring", "monitoring", "datadog", "datadog"),
    "kubernetes_kubeconfig_path": ("", "/root/.kube/config", "/root/.kube/config", "/tmp/kc",
                                   "/tmp/kc"),
    "kubernetes_apiserver_client_timeout": (10, 30, 30, "5", 5),
    "health_port": (5555, 0, 0, "8080", 8080),
    "log_level": ("info", "DEBUG", "debug", "WARN", "warning"),
    "log_format_json": (False, True, True, "TRUE", True),
    "forwarder_timeout": (20, 30, 30, "10", 10),
    "token_checkpoint_interval": (5.0, 2.5, 2.5, "1", 1.0),
    "shutdown_timeout": (20.0, 10, 10.0, "29.5", 29.5),
    "worker_heartbeat_interval": (5.0, 0.5, 0.5, "2", 2.0),
    "worker_memory_limit_mb": (256, 128, 128, "512", 512),
    "worker_restart_backoff_min": (0.5, 0.1, 0.1, "1", 1.0),
    "worker_restart_backoff_max": (30.0, 10, 10.0, "60", 60.0),
    "worker_stable_after": (60.0, 30, 30.0, "120", 120.0),
    "unbundle_events": (False, True, True, "true", True),
    "filtered_event_types": (
        (),
        ["reason!=FailedMount", "type==Warning"],
        ("reason!=FailedMount", "type==Warning"),
        "reason!=X involvedObject.kind=Pod",
        ("reason!=X", "involvedObject.kind=Pod"),
    ),
    "collected_event_types": (
        (),
        [{"kind": "Pod", "reasons": ["BackOff"]}],
        (EventTypeSelector(kind="Pod", reasons=("BackOff",)),),
        '[{"kind": "Node", "source": "kubelet", "reasons": ["NodeNotReady"]}]',
        (EventTypeSelector("Node", "kubelet", ("NodeNotReady",)),),
    ),
    "kubernetes_event_max_age": (0, 3600, 3600, "60", 60),
    "event_batch_max": (500, 100, 100, "1000", 1000),
    "event_batch_max_bytes": (2 * 1024 * 1024, 1048576, 1048576, "4194304", 4194304),
    "event_flush_interval": (1.0, 0.25, 0.25, "2", 2.0),
    "kubernetes_event_watch_timeout": (300, 60, 60, "600", 600),
    "controlplane_check_interval": (15.0, 5, 5.0, "30", 30.0),
    "controlplane_use_readyz": (False, True, True, "1", True),
}


def value_of(config: AgentConfig, key: str) -> object:
    head, _, sub = key.partition(".")
    value = getattr(getattr(config, head), sub) if sub else getattr(config, head)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def file_for(values: dict[str, object]) -> str:
    nested: dict[str, object] = {}
    for key, value in values.items():
        head, _, sub = key.partition(".")
        if sub:
            nested.setdefault(head, {})[sub] = value  # type: ignore[index]
        else:
            nested[key] = value
    return yaml.safe_dump(nested)


@pytest.fixture
def load(tmp_path: Path):
    """load_config on a temporary datadog.yaml (text None: leave the file as it is, by default
    absent) and no service-account mount."""

    def load(text: str | None = None, env: dict[str, str] | None = None, **kwargs) -> LoadedConfig:
        path = tmp_path / "datadog.yaml"
        if text is not None:
            path.write_text(text)
        kwargs.setdefault("sa_namespace_path", str(tmp_path / "no-sa-mount"))
        return load_config(str(path), env or {}, **kwargs)

    return load


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "datadog.yaml")


def error_of(load, text: str | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_table_covers_every_key():
    assert set(TABLE) == set(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_default(load, key):
    loaded = load()
    default = TABLE[key][0]
    if default is DERIVED:
        assert value_of(loaded.config, key) == HOST
        assert loaded.sources[key] == "derived"
    else:
        assert value_of(loaded.config, key) == default
        assert loaded.sources[key] == "default"


@pytest.mark.parametrize("key", KEYS)
def test_from_file(load, key):
    _, in_file, expected, _, _ = TABLE[key]
    loaded = load(file_for({key: in_file}))
    assert value_of(loaded.config, key) == expected
    assert loaded.sources[key] == "file"


@pytest.mark.parametrize("key", KEYS)
def test_env_wins_over_file(load, key):
    _, in_file, _, in_env, expected = TABLE[key]
    loaded = load(file_for({key: in_file}), {env_name(key): in_env})
    assert value_of(loaded.config, key) == expected
    assert loaded.sources[key] == "env"


def test_env_names():
    assert env_name("api_key") == "DD_API_KEY"
    assert env_name("proxy.https") == "DD_PROXY_HTTPS"
    assert env_name("proxy.no_proxy") == "DD_PROXY_NO_PROXY"


def test_empty_env_value_counts_as_unset(load):
    loaded = load("site: datadoghq.eu\n", {"DD_SITE": ""})
    assert loaded.config.site == "datadoghq.eu"
    assert loaded.sources["site"] == "file"


def test_missing_file_is_fine(load):
    loaded = load(None, {"DD_SITE": "datadoghq.eu"})
    assert not loaded.file_found
    assert loaded.config.site == "datadoghq.eu"
    assert loaded.warnings == ()


def test_empty_file_and_null_values_are_unset(load):
    assert load("").file_found
    loaded = load("hostname:\ntags:\nproxy:\n  https:\n")
    assert loaded.sources["tags"] == "default"
    assert loaded.sources["proxy.https"] == "default"
    assert loaded.config.hostname == HOST


def test_default_path_and_process_environment(monkeypatch):
    monkeypatch.setenv("DD_SITE", "datadoghq.eu")
    loaded = load_config(sa_namespace_path="/nonexistent/namespace")
    assert loaded.path == DEFAULT_CONFIG_PATH == cli._DEFAULT_CONFIG_PATH
    assert loaded.file_found == os.path.exists(DEFAULT_CONFIG_PATH)
    assert loaded.config.site == "datadoghq.eu"
    assert loaded.sources["site"] == "env"


@pytest.mark.parametrize("word", ["true", "True", "TRUE", "yes", "Yes", "on", "ON", "1", " 1 "])
def test_datadog_true(load, word):
    assert load(env={"DD_LOG_FORMAT_JSON": word}).config.log_format_json is True


@pytest.mark.parametrize("word", ["false", "False", "no", "NO", "off", "Off", "0"])
def test_datadog_false(load, word):
    loaded = load("log_format_json: true\n", {"DD_LOG_FORMAT_JSON": word})
    assert loaded.config.log_format_json is False


@pytest.mark.parametrize(
    ("yaml_word", "expected"),
    [("yes", True), ("no", False), ("on", True), ("off", False), ("1", True), ("0", False),
     ('"true"', True), ("'No'", False)],
)
def test_datadog_booleans_in_yaml(load, yaml_word, expected):
    assert load(f"unbundle_events: {yaml_word}\n").config.unbundle_events is expected


def test_lists_from_env_are_space_separated(load):
    loaded = load(env={
        "DD_TAGS": " env:prod\tteam:a  ",
        "DD_PROXY_NO_PROXY": "localhost 127.0.0.1 .cluster.local",
        "DD_FILTERED_EVENT_TYPES": "reason!=FailedMount type!=Normal",
    })
    assert loaded.config.tags == ("env:prod", "team:a")
    assert loaded.config.proxy.no_proxy == ("localhost", "127.0.0.1", ".cluster.local")
    assert loaded.config.filtered_event_types == ("reason!=FailedMount", "type!=Normal")


def test_collected_event_types_from_env_json(load):
    loaded = load(env={
        "DD_COLLECTED_EVENT_TYPES": '[{"kind": "Pod", "reasons": ["BackOff", "Failed"]},'
        ' {"source": "kubelet"}]',
    })
    assert loaded.config.collected_event_types == (
        EventTypeSelector(kind="Pod", reasons=("BackOff", "Failed")),
        EventTypeSelector(source="kubelet"),
    )


def test_unknown_keys_warn_and_are_ignored(load, path):
    loaded = load("logs_enabled: true\napm_config: {enabled: false}\nproxy: {socks: x}\n", {
        "DD_LOGS_ENABLED": "true", "DD_SERVICE": "agent", "DD_ENV": "prod"})
    assert loaded.warnings == (
        f"{path}: unknown keys ignored: logs_enabled, apm_config, proxy.socks",
        "unknown environment variables ignored: DD_LOGS_ENABLED",
    )
    assert not hasattr(loaded.config, "logs_enabled")


def test_short_lease_is_accepted_with_a_warning(load):
    loaded = load(env={"DD_LEADER_LEASE_DURATION": "3"})
    assert loaded.config.leader_lease_duration == 3
    assert loaded.warnings == (
        "leader_lease_duration: 3 s is under 30 s: fine for tests, but a slow API server "
        "may cost the lease (Datadog uses 60)",
    )
    assert load("leader_lease_duration: 30\n").warnings == ()


def test_forced_leader_election_is_derived(load, path):
    loaded = load(env={"DD_COLLECT_KUBERNETES_EVENTS": "true"})
    assert loaded.config.leader_election is True
    assert loaded.sources["leader_election"] == "derived"
    assert loaded.warnings == ()
    overruled = load("leader_election: false\ncollect_kubernetes_events: yes\n")
    assert overruled.config.leader_election is True
    assert overruled.sources["leader_election"] == "derived"
    assert overruled.warnings == (
        "leader_election: forced on because collect_kubernetes_events is true "
        f"({path} set it to false)",
    )
    explicit = load("leader_election: true\ncollect_kubernetes_events: yes\n")
    assert explicit.sources["leader_election"] == "file"


def test_the_model_itself_refuses_events_without_election():
    with pytest.raises(ValidationError):
        AgentConfig(collect_kubernetes_events=True)
    assert AgentConfig(collect_kubernetes_events=True, leader_election=True).leader_election


@pytest.mark.parametrize(
    ("kubernetes", "setting", "expected", "source"),
    [("true", None, True, "derived"), ("TRUE", "false", False, "env"), ("false", None, False,
     "default"), (None, None, False, "default")],
)
def test_kubernetes_turns_on_controlplane_checks(load, kubernetes, setting, expected, source):
    env = {}
    if kubernetes is not None:
        env["KUBERNETES"] = kubernetes
    if setting is not None:
        env["DD_COLLECT_CONTROLPLANE_CHECKS"] = setting
    loaded = load(env=env)
    assert loaded.config.collect_controlplane_checks is expected
    assert loaded.sources["collect_controlplane_checks"] == source


def test_namespace_from_the_service_account_mount(load, tmp_path):
    mount = tmp_path / "namespace"
    mount.write_text("monitoring\n")
    loaded = load(sa_namespace_path=str(mount))
    assert loaded.config.kube_resources_namespace == "monitoring"
    assert loaded.sources["kube_resources_namespace"] == "derived"
    explicit = load("kube_resources_namespace: datadog\n", sa_namespace_path=str(mount))
    assert explicit.config.kube_resources_namespace == "datadog"
    mount.write_text("")
    assert load("", sa_namespace_path=str(mount)).config.kube_resources_namespace == "default"


# --- errors: one line naming the file, the key (or DD_* variable) and the reason --------


def test_unreadable_file(load, path, tmp_path):
    os.mkdir(path)
    assert error_of(load) == f"{path}: cannot read: Is a directory"
    below_a_file = tmp_path / "a-file"
    below_a_file.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(str(below_a_file / "datadog.yaml"), {})
    assert str(info.value) == f"{below_a_file}/datadog.yaml: cannot read: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_permission(load, path):
    Path(path).write_text("site: datadoghq.eu\n")
    os.chmod(path, 0)
    assert error_of(load) == f"{path}: cannot read: Permission denied"


def test_not_yaml(load, path):
    assert error_of(load, "site: a: b\n") == (
        f"{path}: not valid YAML: mapping values are not allowed here (line 1, column 8)"
    )
    assert error_of(load, "tags: [a\n") == (
        f"{path}: not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"
    )


def test_not_utf8(load, path):
    Path(path).write_bytes(b"site: \xff\n")
    assert error_of(load) == f"{path}: not UTF-8 text (byte 6)"


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just words\n", "str")])
def test_not_a_mapping(load, path, text, kind):
    assert error_of(load, text) == f"{path}: not a YAML mapping of keys to values (got a {kind})"


def test_proxy_not_a_mapping(load, path):
    assert error_of(load, "proxy: http://p:3128\n") == (
        f"{path}: proxy: must be a mapping with http, https, no_proxy"
    )


@pytest.mark.parametrize(
    ("text", "env", "where", "reason"),
    [
        ("leader_lease_duration: -5\n", {}, "leader_lease_duration",
         "must be a positive integer, got -5"),
        ("", {"DD_LEADER_LEASE_DURATION": "-5"}, "DD_LEADER_LEASE_DURATION (env)",
         "must be a positive integer, got -5"),
        ("leader_lease_duration: 0\n", {}, "leader_lease_duration",
         "must be a positive integer, got 0"),
        ("leader_lease_duration: 60.5\n", {}, "leader_lease_duration",
         "must be a positive integer, got 60.5"),
        ("", {"DD_LEADER_LEASE_DURATION": "sixty"}, "DD_LEADER_LEASE_DURATION (env)",
         "must be a positive integer, got 'sixty'"),
        ("leader_lease_duration: true\n", {}, "leader_lease_duration",
         "must be a positive integer, got true"),
        ("event_batch_max: abc\n", {}, "event_batch_max", "must be a positive integer, got 'abc'"),
        ("kubernetes_event_max_age: -1\n", {}, "kubernetes_event_max_age",
         "must be a non-negative integer, got -1"),
        ("event_flush_interval: 0\n", {}, "event_flush_interval",
         "must be a positive number of seconds, got 0"),
        ("", {"DD_TOKEN_CHECKPOINT_INTERVAL": "nan"}, "DD_TOKEN_CHECKPOINT_INTERVAL (env)",
         "must be a positive number of seconds, got 'nan'"),
        ("", {"DD_LOG_FORMAT_JSON": "maybe"}, "DD_LOG_FORMAT_JSON (env)",
         "expected a boolean (true/false, yes/no, on/off, 1/0), got 'maybe'"),
        ("collect_kubernetes_events: 2\n", {}, "collect_kubernetes_events",
         "expected a boolean (true/false, yes/no, on/off, 1/0), got 2"),
        ("leader_election_resource: pods\n", {}, "leader_election_resource",
         "must be one of endpoints, configmap, lease, got 'pods'"),
        ("", {"DD_LOG_LEVEL": "verbose"}, "DD_LOG_LEVEL (env)",
         "must be one of trace, debug, info, warning, error, critical, off, got 'verbose'"),
        ("shutdown_timeout: 30\n", {}, "shutdown_timeout",
         "must be less than 30 s (Kubernetes' default termination grace period), got 30"),
        ("", {"DD_SHUTDOWN_TIMEOUT": "45.5"}, "DD_SHUTDOWN_TIMEOUT (env)",
         "must be less than 30 s (Kubernetes' default termination grace period), got 45.5"),
        ("health_port: 70000\n", {}, "health_port",
         "must be a port from 1 to 65535, or 0 to disable, got 70000"),
        ("", {"DD_HEALTH_PORT": "-1"}, "DD_HEALTH_PORT (env)",
         "must be a port from 1 to 65535, or 0 to disable, got -1"),
        ("worker_restart_backoff_min: 5\nworker_restart_backoff_max: 1\n", {},
         "worker_restart_backoff_max", "must be >= worker_restart_backoff_min (5.0), got 1.0"),
        ("tags: {a: b}\n", {}, "tags", "must be a list or a space-separated string, got a dict"),
        ("hostname: my_host\n", {}, "hostname", "must be an RFC 1123 host name, got 'my_host'"),
        ("kube_resources_namespace: Prod\n", {}, "kube_resources_namespace",
         "must be a DNS-1123 label (a-z, 0-9, '-'), got 'Prod'"),
        ("leader_lease_name: ''\n", {}, "leader_lease_name",
         "must be a DNS-1123 name (a-z, 0-9, '-', '.'), got ''"),
        ("site: https://datadoghq.com\n", {}, "site",
         "must be a Datadog site domain like datadoghq.eu, got 'https://datadoghq.com'"),
        ("filtered_event_types: ['reason != X']\n", {}, "filtered_event_types",
         "'reason != X' is not a field selector term like reason!=BackOff "
         "(field, = == or !=, value; no spaces or commas)"),
        ("", {"DD_FILTERED_EVENT_TYPES": "reason!=X color=red"},
         "DD_FILTERED_EVENT_TYPES (env)",
         "'color=red': events cannot be selected on 'color'; fields: involvedObject.kind, "
         "involvedObject.namespace, involvedObject.name, involvedObject.uid, "
         "involvedObject.apiVersion, involvedObject.resourceVersion, involvedObject.fieldPath, "
         "reason, reportingComponent, source, type, metadata.name, metadata.namespace"),
        ("collected_event_types: [{kinds: Pod}]\n", {}, "collected_event_types",
         "item 0: unknown field 'kinds' (expected kind, source, reasons)"),
        ("collected_event_types: [Pod]\n", {}, "collected_event_types",
         "item 0 must be a mapping (kind, source, reasons), got 'Pod'"),
        ("", {"DD_COLLECTED_EVENT_TYPES": '[{"kind": "Pod"'}, "DD_COLLECTED_EVENT_TYPES (env)",
         "not valid JSON: Expecting ',' delimiter at character 15"),
        ("", {"KUBERNETES": "sure"}, "KUBERNETES (env)",
         "expected a boolean (true/false, yes/no, on/off, 1/0), got 'sure'"),
    ],
)
def test_invalid_value(load, path, text, env, where, reason):
    assert error_of(load, text, env) == f"{path}: {where}: {reason}"


def test_several_errors_report_the_first_and_count_the_rest(load, path):
    message = error_of(load, "leader_lease_duration: -1\nhealth_port: x\nlog_level: loud\n")
    assert message == (
        f"{path}: leader_lease_duration: must be a positive integer, got -1 (and 2 more)"
    )


# --- secrets -------------------------------------------------------------------------------


def secret_free(text: str) -> bool:
    return API_KEY not in text and PROXY_PASSWORD not in text and "s3cret" not in text


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("api_key: 'abc s3cret'\n", {}, "api_key: must not contain spaces or control characters; "
         "value not shown"),
        ("", {"DD_API_KEY": "s3cret\x07"}, "DD_API_KEY (env): must not contain spaces or control "
         "characters; value not shown"),
        ("api_key: [s3cret]\n", {},
         "api_key: must be a string (quote it in YAML); value not shown"),
        ("", {"DD_PROXY_HTTPS": f"proxy:{PROXY_PASSWORD}@"}, "DD_PROXY_HTTPS (env): must be a URL "
         "like http://host:3128; value not shown"),
        (f"proxy: {{http: 'ftp://u:{PROXY_PASSWORD}@p'}}\n", {}, "proxy.http: must be a URL like "
         "http://host:3128; value not shown"),
        (f"dd_url: 'gopher://u:{PROXY_PASSWORD}@x'\n", {}, "dd_url: must be an http:// or https:// "
         "URL with a host; value not shown"),
        (f"api_key: {API_KEY}: x\n", {}, "not valid YAML: mapping values are not allowed here "
         "(line 1, column 42)"),
        (f"{API_KEY}\n", {}, "not a YAML mapping of keys to values (got a str)"),
    ],
)
def test_secrets_never_in_errors(load, path, text, env, expected):
    with pytest.raises(ConfigError) as info:
        load(text, env)
    assert str(info.value) == f"{path}: {expected}"
    # Not in a traceback either: the pydantic error (which holds the input) is not chained.
    assert secret_free("".join(traceback.format_exception(info.value)))


def test_api_key_is_trimmed(load):
    loaded = load(env={"DD_API_KEY": f"{API_KEY}\n"})
    assert loaded.config.api_key.get_secret_value() == API_KEY
    assert loaded.warnings == ()
    assert load(env={"DD_API_KEY": "not-a-key"}).warnings == (
        "api_key: does not look like a Datadog API key (32 hexadecimal characters)",
    )


def test_scrubbing():
    assert scrub_api_key(API_KEY) == "*" * 27 + "bcdef"
    assert scrub_api_key("short-s3cret") == "********"
    assert scrub_api_key("") == ""
    assert scrub_url(f"http://user:{PROXY_PASSWORD}@proxy:3128") == "http://user:********@proxy:3128"
    assert scrub_url("http://tok3n@proxy") == "http://********@proxy"
    assert scrub_url("http://proxy:3128") == "http://proxy:3128"


def test_secrets_never_in_repr_or_scrubbed_output(load):
    loaded = load(file_for({
        "api_key": API_KEY,
        "proxy.http": f"http://user:{PROXY_PASSWORD}@proxy:3128",
        "proxy.https": f"http://user:{PROXY_PASSWORD}@proxy:3129",
    }))
    config = loaded.config
    assert secret_free(repr(config))
    assert secret_free(str(config))
    assert secret_free(repr(worker_settings(config)))
    data = scrubbed(config)
    assert data["api_key"] == "*" * 27 + "bcdef"
    assert data["proxy"]["https"] == "http://user:********@proxy:3129"
    assert secret_free(yaml.safe_dump(data))
    assert secret_free(yaml.safe_dump(resolved(loaded)))
    # ... while the real values are there for whoever needs them.
    assert config.api_key.get_secret_value() == API_KEY


def test_config_is_frozen(load):
    config = load().config
    with pytest.raises(ValidationError):
        config.health_port = 1  # type: ignore[misc]


def test_resolved_pairs_each_value_with_its_source(load):
    loaded = load("site: datadoghq.eu\n", {"DD_PROXY_NO_PROXY": "a b"})
    data = resolved(loaded)
    assert data["site"] == {"value": "datadoghq.eu", "source": "file"}
    assert data["proxy"]["no_proxy"] == {"value": ["a", "b"], "source": "env"}
    assert data["health_port"] == {"value": 5555, "source": "default"}
    assert data["hostname"] == {"value": HOST, "source": "derived"}


# --- what the workers are told -------------------------------------------------------------


def test_worker_settings_mapping(load):
    loaded = load(file_for({
        "api_key": API_KEY, "site": "datadoghq.eu", "dd_url": "http://127.0.0.1:9/",
        "hostname": "node-1", "tags": ["env:prod"], "proxy.http": "http://p:1",
        "proxy.https": "http://p:2", "proxy.no_proxy": ["localhost"],
        "kubernetes_kubeconfig_path": "/kc", "kubernetes_apiserver_client_timeout": 7,
        "forwarder_timeout": 9, "unbundle_events": True,
        "filtered_event_types": ["reason!=X"], "collected_event_types": [{"kind": "Pod"}],
        "kubernetes_event_max_age": 60, "event_batch_max": 10, "event_batch_max_bytes": 1000,
        "event_flush_interval": 0.5, "kubernetes_event_watch_timeout": 30,
        "controlplane_check_interval": 3, "controlplane_use_readyz": True,
        "worker_heartbeat_interval": 0.25, "log_level": "warn", "log_format_json": True,
    }))
    assert worker_settings(loaded.config) == WorkerSettings(
        kube=KubeSettings(kubeconfig_path="/kc", client_timeout_s=7.0),
        intake=IntakeSettings(
            api_key=API_KEY, site="datadoghq.eu", dd_url="http://127.0.0.1:9",
            proxy_http="http://p:1", proxy_https="http://p:2", no_proxy=("localhost",),
            hostname="node-1", tags=("env:prod",), timeout_s=9.0,
        ),
        events=EventSettings(
            unbundle=True, filtered_event_types=("reason!=X",),
            collected_event_types=(EventTypeSelector(kind="Pod"),), max_age_s=60,
            batch_max_events=10, batch_max_bytes=1000, flush_interval_s=0.5, watch_timeout_s=30,
        ),
        controlplane=ControlPlaneSettings(interval_s=3.0, use_readyz=True),
        heartbeat_interval_s=0.25,
        log_level="WARNING",
        log_format_json=True,
    )


def test_worker_settings_defaults_match_the_workers_defaults(load):
    mapped = worker_settings(load(env={"DD_HOSTNAME": "h"}).config)
    assert mapped == WorkerSettings(intake=IntakeSettings(hostname="h"))


@pytest.mark.parametrize(
    ("env", "kinds"),
    [
        ({}, ()),
        ({"DD_COLLECT_KUBERNETES_EVENTS": "true"}, ("events",)),
        ({"KUBERNETES": "true"}, ("controlplane",)),
        ({"KUBERNETES": "true", "DD_COLLECT_KUBERNETES_EVENTS": "yes"}, ("events", "controlplane")),
    ],
)
def test_enabled_worker_kinds(load, env, kinds):
    assert enabled_worker_kinds(load(env=env).config) == kinds
