"""The health server and the `health` command, against a real server on 127.0.0.1:0."""

import contextlib
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from supervisor.health import HealthServer, start_health_server
from supervisor.metrics import stat_family
from supervisor.probe import render
from supervisor.status import AgentStatus, LoopStatus, WorkerStatus

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-api-key-0123456789"

LOOPS = (LoopStatus("elector", 0.4, 30.0), LoopStatus("workers", 0.1, 10.0),
         LoopStatus("checkpoint", 1.0, 15.0))
EVENTS = WorkerStatus(
    kind="events", state="running", pid=4242, restarts=1, last_exit_code=1,
    last_exit_reason="exit 1", heartbeat_age_s=0.8, rss_bytes=31_000_000, cpu_percent=2.5,
    stats={"events.delivered": 120, "payloads_sent_total": 7, "restarts": 3,
           "intake errors": 2, "bad": float("nan")},
)
CONTROLPLANE = WorkerStatus(kind="controlplane", state="running", pid=4243,
                            heartbeat_age_s=1.1, stats={"checks_sent": 9})
LEADER = AgentStatus(
    identity="agent-0-ab12", version="0.1.0", leader_election=True, is_leader=True,
    holder="agent-0-ab12", lock="endpoints default/datadog-leader-election", lease_age_s=2.5,
    leader_transitions=3, renew_latency_s=0.012, api_contact_age_s=2.5,
    token="1234", token_timestamp="2024-05-01T10:00:00Z", token_persisted="1200",
    checkpoint_writes=5, checkpoint_failures=1, checkpoint_last_ok=True,
    loops=LOOPS, workers=(EVENTS, CONTROLPLANE),
    election_requests={"get": 4, "update": 20, "create": 1},
)
FOLLOWER = replace(
    LEADER, identity="agent-1-cd34", is_leader=False, renew_latency_s=None,
    token=None, token_timestamp=None, token_persisted=None, checkpoint_writes=0,
    checkpoint_failures=0, checkpoint_last_ok=None,
    workers=(WorkerStatus("events", "stopped"), WorkerStatus("controlplane", "stopped")),
    election_requests={"get": 2},
)


@contextlib.contextmanager
def serving(provider, **kwargs):
    if isinstance(provider, AgentStatus):
        status = provider
        provider = lambda: status  # noqa: E731
    server = HealthServer(provider, port=0, host="127.0.0.1", **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def get(server, path, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def get_json(server, path):
    code, content_type, body = get(server, path)
    assert content_type == "application/json"
    return code, json.loads(body)


def samples(server, accept=None):
    code, _, body = get(server, "/metrics", {"Accept": accept} if accept else None)
    assert code == 200, body
    found = {}
    names = []
    for family in text_string_to_metric_families(body.decode()):
        names.append(family.name)
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, key
            found[key] = sample.value
    assert len(names) == len(set(names)), names
    return found


def probe(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != "DD_HEALTH_PORT"}
    full_env.update(env or {})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.probe", "--host", "127.0.0.1", *args],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60, check=False,
    )
    return done.returncode, done.stdout, time.monotonic() - started


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def log_lines():
    lines = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


# -- /live /ready /health ------------------------------------------------------------------

def test_leader_all_healthy():
    with serving(LEADER) as server:
        assert get_json(server, "/live") == (200, {
            "Healthy": ["checkpoint", "elector", "workers"], "Unhealthy": []})
        code, ready = get_json(server, "/ready")
        assert code == 200
        assert ready["Unhealthy"] == []
        code, health = get_json(server, "/health")
    assert code == 200
    assert health["Healthy"] == ["checkpoint", "config-reload", "elector", "supervisor",
                                 "worker-controlplane", "worker-events"]
    assert health["Unhealthy"] == []
    assert health["problems"] == {}
    assert health["identity"] == "agent-0-ab12"
    assert health["version"] == "0.1.0"
    assert health["role"] == "leader"
    assert health["leader"] == "agent-0-ab12"
    assert health["lock"] == "endpoints default/datadog-leader-election"
    assert health["lease_age_s"] == 2.5
    assert health["leader_transitions"] == 3
    assert health["token"] == {"key": "1234", "timestamp": "2024-05-01T10:00:00Z",
                               "persisted": "1200"}
    assert health["checkpoint"] == {"writes": 5, "failures": 1, "last_ok": True}
    assert health["config"]["last_reload_ok"] is None
    events = health["workers"][0]
    assert events["kind"] == "events"
    assert events["pid"] == 4242
    assert events["state"] == "running"
    assert events["restarts"] == 1
    assert events["last_exit_code"] == 1
    assert events["last_exit_reason"] == "exit 1"
    assert events["heartbeat_age_s"] == 0.8
    assert events["rss_bytes"] == 31_000_000
    assert events["cpu_percent"] == 2.5
    assert events["healthy"] is True
    assert events["stats"]["events.delivered"] == 120
    assert events["stats"]["bad"] is None  # NaN cannot be JSON: null, not a broken body
    assert [loop["name"] for loop in health["loops"]] == ["elector", "workers", "checkpoint"]
    assert health["election_requests"] == {"create": 1, "get": 4, "update": 20}


def test_follower_idle_workers_are_healthy_and_no_checkpoint():
    with serving(FOLLOWER) as server:
        code, health = get_json(server, "/health")
        assert get(server, "/live")[0] == 200
        assert get(server, "/ready")[0] == 200
    assert code == 200
    assert health["role"] == "follower"
    assert health["leader"] == "agent-0-ab12"
    assert health["identity"] == "agent-1-cd34"
    assert "checkpoint" not in health["Healthy"]
    assert health["Healthy"] == ["config-reload", "elector", "supervisor",
                                 "worker-controlplane", "worker-events"]
    assert [w["state"] for w in health["workers"]] == ["stopped", "stopped"]


def test_crash_looping_worker_fails_health_but_not_liveness():
    crashing = replace(EVENTS, state="backoff", pid=None, restarts=7, last_exit_code=-9,
                       last_exit_reason="heartbeat missed")
    unable = replace(CONTROLPLANE, healthy=False, detail="intake answered 403: invalid API key")
    status = replace(LEADER, workers=(crashing, unable))
    with serving(status) as server:
        assert get(server, "/live")[0] == 200
        assert get(server, "/ready")[0] == 200
        code, health = get_json(server, "/health")
        metrics = samples(server)
    assert code == 500  # like the Datadog Agent's health endpoint
    assert health["Unhealthy"] == ["worker-controlplane", "worker-events"]
    assert "supervisor" in health["Healthy"]
    assert health["problems"] == {
        "worker-controlplane": "intake answered 403: invalid API key",
        "worker-events": "restarting after heartbeat missed (7 restarts)",
    }
    assert metrics["kube_event_agent_worker_restarts_total", (("kind", "events"),)] == 7
    assert metrics["kube_event_agent_worker_up", (("kind", "events"),)] == 0
    assert metrics["kube_event_agent_worker_healthy", (("kind", "controlplane"),)] == 0
    assert metrics["kube_event_agent_worker_state", (("kind", "events"),
                                                     ("state", "backoff"))] == 1
    assert metrics["kube_event_agent_worker_state", (("kind", "events"),
                                                     ("state", "running"))] == 0


def test_a_follower_with_a_backoff_record_is_not_unhealthy():
    # Leftover state of a worker stopped by fencing: idle by design on a follower.
    status = replace(FOLLOWER, workers=(replace(EVENTS, state="backoff", pid=None),))
    with serving(status) as server:
        code, health = get_json(server, "/health")
    assert code == 200
    assert "worker-events" in health["Healthy"]


def test_stuck_loop_fails_liveness_and_names_it():
    stuck = (LoopStatus("elector", 95.0, 30.0), *LOOPS[1:])
    with serving(replace(LEADER, loops=stuck)) as server:
        code, live = get_json(server, "/live")
        health_code, health = get_json(server, "/health")
    assert code == 500
    assert live == {"Healthy": ["checkpoint", "workers"], "Unhealthy": ["elector"]}
    assert health_code == 500
    assert health["Unhealthy"] == ["supervisor"]
    assert health["problems"]["supervisor"] == "elector silent 95.0s (max 30.0s)"
    assert health["live"] is False


def test_api_never_contacted_is_not_ready():
    status = replace(FOLLOWER, api_contact_age_s=None, lease_age_s=None, holder="")
    with serving(status) as server:
        code, ready = get_json(server, "/ready")
        assert get(server, "/live")[0] == 200
        health_code, health = get_json(server, "/health")
        metrics = samples(server)
    assert code == 503
    assert ready["Unhealthy"] == ["apiserver"]
    assert ready["api_contact_age_s"] is None
    assert health_code == 500
    assert health["Unhealthy"] == ["elector"]
    assert health["problems"]["elector"] == "API server never answered"
    assert math.isinf(metrics["kube_event_agent_api_contact_age_seconds", ()])
    assert metrics["kube_event_agent_ready", ()] == 0
    assert ("kube_event_agent_lease_age_seconds", ()) not in metrics


def test_api_silent_too_long_and_config_not_loaded():
    status = replace(LEADER, api_contact_age_s=61.0, ready_after_s=60.0, config_loaded=False)
    with serving(status) as server:
        code, ready = get_json(server, "/ready")
        _, health = get_json(server, "/health")
    assert code == 503
    assert ready["Unhealthy"] == ["apiserver", "config"]
    assert health["Unhealthy"] == ["elector", "supervisor"]


def test_failed_reload_and_failed_checkpoint():
    status = replace(LEADER, last_reload_ok=False, last_reload_age_s=3.0,
                     last_reload_error="datadog.yaml: leader_lease_duration: must be > 0",
                     checkpoint_last_ok=False)
    with serving(status) as server:
        code, health = get_json(server, "/health")
        metrics = samples(server)
        assert get(server, "/live")[0] == 200
    assert code == 500
    assert health["Unhealthy"] == ["checkpoint", "config-reload"]
    assert health["problems"]["config-reload"] == (
        "reload rejected: datadog.yaml: leader_lease_duration: must be > 0")
    assert health["config"]["last_reload_ok"] is False
    assert metrics["kube_event_agent_config_last_reload_successful", ()] == 0


def test_without_leader_election_there_is_no_elector():
    status = replace(LEADER, leader_election=False, holder="", lock="", lease_age_s=None,
                     election_requests={})
    with serving(status) as server:
        code, health = get_json(server, "/health")
    assert code == 200
    assert "elector" not in health["Healthy"] + health["Unhealthy"]
    assert health["role"] == "leader"


# -- a supervisor that cannot answer -------------------------------------------------------

def test_hanging_provider_fails_fast_and_costs_one_thread():
    release = threading.Event()
    calls = []

    def provider():
        calls.append(1)
        release.wait(30)
        return LEADER

    with serving(provider, status_timeout_s=0.3) as server:
        started = time.monotonic()
        code, body = get_json(server, "/live")
        assert code == 500
        assert "status unavailable" in body["error"]
        assert time.monotonic() - started < 5
        assert get(server, "/ready")[0] == 503
        assert get_json(server, "/health")[0] == 500
        code, _, text = get(server, "/metrics")
        assert code == 500
        assert b"status unavailable" in text
        # Every request waited on the same stuck call instead of starting another one.
        assert len(calls) == 1
        assert sum(t.name == "health-status" for t in threading.enumerate()) == 1
        release.set()
        deadline = time.monotonic() + 10
        while get(server, "/live")[0] != 200:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.05)


def test_provider_that_raises_gives_500_without_its_message(log_lines):
    def provider():
        raise RuntimeError(f"boom {SECRET}")

    with serving(provider) as server:
        code, body = get_json(server, "/live")
        assert code == 500
        assert body == {"error": "status unavailable: RuntimeError"}
        assert get(server, "/ready")[0] == 503
        code, body = get_json(server, "/health")
        assert code == 500
        assert SECRET not in json.dumps(body)


# -- HTTP robustness and secrets -----------------------------------------------------------

def raw_request(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_unknown_paths_and_bad_requests_never_echo_the_request(log_lines):
    headers = {"Authorization": f"Bearer {SECRET}", "DD-API-KEY": SECRET}
    with serving(LEADER) as server:
        code, _, body = get(server, f"/nope/{SECRET}", headers)
        assert code == 404
        assert SECRET.encode() not in body
        assert json.loads(body)["error"] == "not found"
        assert get(server, "/live/")[0] == 404
        assert get(server, f"/live?token={SECRET}", headers)[0] == 200
        for request in (
            f"GET /live HTTP/9.9\r\nAuthorization: Bearer {SECRET}\r\n\r\n",
            f"{SECRET} {SECRET}\r\n\r\n",
            f"POST /live HTTP/1.1\r\nDD-API-KEY: {SECRET}\r\nContent-Length: 0\r\n\r\n",
            f"GET /health HTTP/1.1\r\nX-{'a' * 70000}: {SECRET}\r\n\r\n",
        ):
            answer = raw_request(server.port, request.encode())
            # (Malformed request lines get the stdlib's HTTP/0.9 answer: a body, no status.)
            assert b"error" in answer, answer[:100]
            assert b" 200 " not in answer.split(b"\r\n")[0]
            assert SECRET.encode() not in answer
        # The server is still fine afterwards.
        assert get(server, "/live")[0] == 200
    assert any("GET /live -> 200" in line for line in log_lines)
    assert not [line for line in log_lines if SECRET in line]


def test_head_and_concurrent_requests():
    with serving(LEADER) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("HEAD", "/health")
        response = connection.getresponse()
        assert response.status == 200
        assert response.read() == b""
        connection.close()
        results = []
        threads = [threading.Thread(target=lambda: results.append(get(server, "/metrics")[0]))
                   for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert results == [200] * 16


def test_start_returns_stop_closes_and_port_zero_disables():
    assert start_health_server(0, lambda: LEADER) is None
    server = start_health_server(free_port(), lambda: LEADER, host="127.0.0.1")
    assert server is not None
    port = server.port
    assert get(server, "/live")[0] == 200
    with pytest.raises(OSError, match="in use"):
        HealthServer(lambda: LEADER, port=port, host="127.0.0.1").start()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    server.stop()  # idempotent


# -- /metrics ------------------------------------------------------------------------------

def test_metrics_exposition():
    with serving(LEADER) as server:
        metrics = samples(server)
        code, content_type, openmetrics = get(
            server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    ident = (("identity", "agent-0-ab12"),)
    assert metrics["kube_event_agent_is_leader", ident] == 1
    assert metrics["kube_event_agent_leader_transitions", ()] == 3
    assert metrics["kube_event_agent_renew_latency_seconds", ()] == 0.012
    assert metrics["kube_event_agent_lease_age_seconds", ()] == 2.5
    assert metrics["kube_event_agent_api_contact_age_seconds", ()] == 2.5
    assert metrics["kube_event_agent_live", ()] == 1
    assert metrics["kube_event_agent_election_requests_total", (("verb", "update"),)] == 20
    assert metrics["kube_event_agent_checkpoint_writes_total", ()] == 5
    assert metrics["kube_event_agent_checkpoint_failures_total", ()] == 1
    assert metrics["kube_event_agent_config_last_reload_successful", ()] == 1
    assert metrics["kube_event_agent_loop_tick_age_seconds", (("loop", "elector"),)] == 0.4
    events, controlplane = (("kind", "events"),), (("kind", "controlplane"),)
    assert metrics["kube_event_agent_worker_up", events] == 1
    assert metrics["kube_event_agent_worker_rss_bytes", events] == 31_000_000
    assert metrics["kube_event_agent_worker_cpu_percent", events] == 2.5
    assert metrics["kube_event_agent_worker_heartbeat_age_seconds", controlplane] == 1.1
    assert metrics["kube_event_agent_worker_last_exit_code", events] == 1
    assert ("kube_event_agent_worker_last_exit_code", controlplane) not in metrics
    # Stats forwarded over the pipes, names sanitised; a clash with a built-in family is
    # renamed rather than merged; a NaN is dropped.
    assert metrics["kube_event_agent_worker_events_delivered_total", events] == 120
    assert metrics["kube_event_agent_worker_payloads_sent_total", events] == 7
    assert metrics["kube_event_agent_worker_intake_errors_total", events] == 2
    assert metrics["kube_event_agent_worker_stat_restarts_total", events] == 3
    assert metrics["kube_event_agent_worker_checks_sent_total", controlplane] == 9
    assert not [key for key in metrics if "bad" in key[0]]
    info = {k: v for k, v in metrics if k == "kube_event_agent_info"}
    assert dict(info["kube_event_agent_info"])["version"] == "0.1.0"
    assert code == 200
    assert content_type.startswith("application/openmetrics-text")
    assert openmetrics.endswith(b"# EOF\n")


def test_follower_metrics():
    with serving(FOLLOWER) as server:
        metrics = samples(server)
    assert metrics["kube_event_agent_is_leader", (("identity", "agent-1-cd34"),)] == 0
    assert metrics["kube_event_agent_worker_up", (("kind", "events"),)] == 0
    assert ("kube_event_agent_renew_latency_seconds", ()) not in metrics


def test_stat_names():
    assert stat_family("events.sent") == "kube_event_agent_worker_events_sent"
    assert stat_family("Bytes-Out/total") == "kube_event_agent_worker_bytes_out"
    assert stat_family("x_total") == "kube_event_agent_worker_x"
    assert stat_family("up") == "kube_event_agent_worker_stat_up"
    assert stat_family("...") is None
    assert stat_family("2xx") == "kube_event_agent_worker_2xx"


# -- the health command --------------------------------------------------------------------

def test_health_command_pass():
    with serving(LEADER) as server:
        code, out, elapsed = probe("--port", str(server.port))
    assert code == 0, out
    assert out.splitlines() == [
        "Agent health: PASS",
        "=== 6 healthy components ===",
        "checkpoint, config-reload, elector, supervisor, worker-controlplane, worker-events",
    ]
    assert elapsed < 10


def test_health_command_fail_lists_unhealthy_with_reasons():
    status = replace(LEADER, workers=(replace(EVENTS, state="backoff", restarts=2),
                                      CONTROLPLANE))
    with serving(status) as server:
        code, out, _ = probe("--timeout", "5", env={"DD_HEALTH_PORT": str(server.port)})
    assert code == 1, out
    assert out.splitlines() == [
        "Agent health: FAIL",
        "=== 5 healthy components ===",
        "checkpoint, config-reload, elector, supervisor, worker-controlplane",
        "=== 1 unhealthy components ===",
        "worker-events",
        "  worker-events: restarting after exit 1 (2 restarts)",
    ]


def test_health_command_unreachable_and_bad_port():
    port = free_port()
    code, out, _ = probe("--port", str(port))
    assert code == 1
    assert out.splitlines() == [
        "Agent health: FAIL",
        f"could not reach the agent at http://127.0.0.1:{port}/health: "
        "[Errno 111] Connection refused",
    ]
    code, out, _ = probe(env={"DD_HEALTH_PORT": "fivefive"})
    assert code == 1
    assert out.splitlines()[1] == "DD_HEALTH_PORT='fivefive' is not a port number"
    code, out, _ = probe(env={"DD_HEALTH_PORT": "0"})
    assert code == 1
    assert "disabled" in out


def test_health_command_when_the_supervisor_hangs():
    release = threading.Event()
    with serving(lambda: release.wait(30) and LEADER, status_timeout_s=0.3) as server:
        code, out, _ = probe("--port", str(server.port))
        release.set()
    assert code == 1
    assert out.splitlines()[0] == "Agent health: FAIL"
    assert out.splitlines()[1].endswith(
        "answered 500: status unavailable: supervisor did not answer within 0.3s")


def test_health_command_times_out_on_a_silent_socket():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection, never answers
        port = listener.getsockname()[1]
        code, out, elapsed = probe("--port", str(port), "--timeout", "0.5")
    assert code == 1
    assert "timed out" in out
    assert elapsed < 10


def test_render_handles_partial_documents():
    assert render({"Healthy": [], "Unhealthy": []}) == ("Agent health: PASS\n", True)
    text, passed = render({"Healthy": ["b", "a"], "Unhealthy": ["c"]})
    assert not passed
    assert text.splitlines()[1:3] == ["=== 2 healthy components ===", "a, b"]


def test_worker_gauges_are_gauges_and_counters_are_counters():
    from prometheus_client import generate_latest

    from supervisor.metrics import metrics_registry

    worker = WorkerStatus(kind="events", state="running", pid=7,
                          stats={"events_delivered_total": 12.0},
                          gauges={"intake_forbidden": 1.0})
    status = AgentStatus(identity="a", version="0", leader_election=True, is_leader=True,
                         workers=(worker,))
    text = generate_latest(metrics_registry(lambda: status)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["kube_event_agent_worker_events_delivered"].type == "counter"
    assert families["kube_event_agent_worker_intake_forbidden"].type == "gauge"
    (sample,) = families["kube_event_agent_worker_intake_forbidden"].samples
    assert sample.labels == {"kind": "events"}
    assert sample.value == 1.0
