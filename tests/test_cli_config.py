"""``kube-event-agent config`` as a real process: YAML out, warnings and errors on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supervisor import cli
from supervisor.config import KEYS

API_KEY = "0123456789abcdef0123456789abcdef"
PROXY_PASSWORD = "hunter2-s3cret"
SCRIPT = str(Path(sys.executable).with_name("kube-event-agent"))
COMMANDS = {
    "console-script": [SCRIPT],
    "python-m": [sys.executable, "-m", "supervisor"],
}


def run(command: list[str], *args: str, env: dict[str, str] | None = None):
    """Run with the machine's environment minus anything the agent would read."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("DD_") and name != "KUBERNETES"
    }
    clean.update(env or {})
    return subprocess.run(
        [*command, *args], env=clean, capture_output=True, text=True, timeout=60, check=False
    )


def entry(data: dict, key: str) -> dict:
    head, _, sub = key.partition(".")
    return data[head][sub] if sub else data[head]


@pytest.fixture(params=sorted(COMMANDS))
def command(request) -> list[str]:
    return COMMANDS[request.param]


def test_prints_every_key_with_value_and_source(command, tmp_path):
    config = tmp_path / "datadog.yaml"
    config.write_text(
        f"api_key: {API_KEY}\n"
        "site: datadoghq.eu\n"
        "logs_enabled: true\n"
        "proxy:\n"
        f"  https: http://user:{PROXY_PASSWORD}@proxy:3128\n"
    )
    result = run(command, "config", "--config", str(config), env={
        "DD_LEADER_LEASE_DURATION": "3",
        "DD_TAGS": "env:test team:a",
        "DD_COLLECT_KUBERNETES_EVENTS": "yes",
    })
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    flat = {key: entry(data, key) for key in KEYS}
    assert all(set(item) == {"value", "source"} for item in flat.values())
    assert flat["api_key"] == {"value": "*" * 27 + "bcdef", "source": "file"}
    assert flat["site"] == {"value": "datadoghq.eu", "source": "file"}
    assert flat["proxy.https"] == {"value": "http://user:********@proxy:3128", "source": "file"}
    assert flat["tags"] == {"value": ["env:test", "team:a"], "source": "env"}
    assert flat["leader_lease_duration"] == {"value": 3, "source": "env"}
    assert flat["leader_election"] == {"value": True, "source": "derived"}
    assert flat["health_port"] == {"value": 5555, "source": "default"}
    assert f"# file: {config}\n" in result.stdout
    assert result.stderr.splitlines() == [
        f"warning: {config}: unknown keys ignored: logs_enabled",
        "warning: leader_lease_duration: 3 s is under 30 s: fine for tests, but a slow API "
        "server may cost the lease (Datadog uses 60)",
    ]
    for secret in (API_KEY, PROXY_PASSWORD):
        assert secret not in result.stdout + result.stderr


def test_one_line_per_key(tmp_path):
    result = run([SCRIPT], "config", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 0, result.stderr
    body = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    # Every key on its own line, proxy's three nested under `proxy:`.
    assert len(body) == len(KEYS) + 1
    assert "proxy:" in body
    assert "  no_proxy: {value: [], source: default}" in body


def test_missing_file_is_fine(command, tmp_path):
    absent = tmp_path / "absent.yaml"
    result = run(command, "config", "--config", str(absent), env={"DD_SITE": "datadoghq.eu"})
    assert result.returncode == 0, result.stderr
    assert f"# file: {absent} (not found: defaults and environment only)" in result.stdout
    assert yaml.safe_load(result.stdout)["site"] == {"value": "datadoghq.eu", "source": "env"}
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("leader_lease_duration: -5\n", {},
         "leader_lease_duration: must be a positive integer, got -5"),
        ("", {"DD_LEADER_LEASE_DURATION": "-5"},
         "DD_LEADER_LEASE_DURATION (env): must be a positive integer, got -5"),
        ("", {"DD_HEALTH_PORT": "65536"},
         "DD_HEALTH_PORT (env): must be a port from 1 to 65535, or 0 to disable, got 65536"),
        ("site: [\n", {},
         "not valid YAML: expected the node content, but found '<stream end>' (line 2, column 1)"),
        (f"api_key: '{API_KEY} x'\n", {},
         "api_key: must not contain spaces or control characters; value not shown"),
    ],
)
def test_invalid_exits_2_with_one_line(command, tmp_path, text, env, message):
    config = tmp_path / "datadog.yaml"
    config.write_text(text)
    result = run(command, "config", "--config", str(config), env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"error: {config}: {message}\n"
    assert API_KEY not in result.stderr


def test_unreadable_file_exits_2(tmp_path):
    result = run([SCRIPT], "config", "--config", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path}: cannot read: Is a directory\n"


def test_help(command):
    result = run(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: kube-event-agent")
    assert "config" in result.stdout
    sub = run(command, "config", "--help")
    assert sub.returncode == 0
    assert "--config PATH" in sub.stdout
    assert "/etc/datadog-agent/datadog.yaml" in sub.stdout


def test_usage_errors_exit_2(command):
    for args in ([], ["frobnicate"], ["config", "--bogus"]):
        result = run(command, *args)
        assert result.returncode == 2, args
        assert result.stdout == ""
        assert "usage: kube-event-agent" in result.stderr


def test_main_returns_exit_codes_in_process(capsys, tmp_path):
    assert cli.main(["--help"]) == 0
    assert cli.main([]) == 2
    assert cli.main(["config", "--config", str(tmp_path / "absent.yaml")]) == 0
    (tmp_path / "bad.yaml").write_text("health_port: x\n")
    assert cli.main(["config", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert capsys.readouterr().err.endswith(
        "health_port: must be a port from 1 to 65535, or 0 to disable, got 'x'\n"
    )


def test_cli_module_is_light_to_import():
    """`health` is an exec probe: importing the CLI must not pull pydantic, yaml or kubernetes."""
    code = (
        "import sys, supervisor.cli; "
        "print(sorted(m for m in ('pydantic', 'yaml', 'kubernetes', 'supervisor.config') "
        "if m in sys.modules))"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
