"""kubesim's admin API (/_kubesim/) and its Python mirror: counts, faults, pause, outage,
compaction, component health, health endpoints."""

from __future__ import annotations

import socket
import time

import pytest
import urllib3
from kubernetes import client
from kubesim_http import call

CM = "/api/v1/namespaces/default/configmaps"


def admin(sim, method: str, path: str, body=None, token=None):
    return call(sim, method, f"/_kubesim/{path}", body, token=token)


def test_admin_api_requires_the_admin_token(kubesim):
    assert admin(kubesim, "GET", "counts", token="").status == 401
    assert admin(kubesim, "GET", "counts", token="wrong").status == 401
    sa_token = kubesim.issue_token("default", "robot")
    denied = admin(kubesim, "GET", "counts", token=sa_token)
    assert denied.status == 403
    assert denied.json["reason"] == "Forbidden"
    assert admin(kubesim, "GET", "counts").status == 200


def test_counts_per_client_verb_and_resource_and_reset(kubesim):
    kubesim.reset_counts()
    call(kubesim, "GET", CM, headers={"User-Agent": "agent/1"})
    call(kubesim, "GET", CM, headers={"User-Agent": "agent/1"})
    call(kubesim, "GET", f"{CM}/x", headers={"User-Agent": "agent/1"})
    call(kubesim, "GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases",
         headers={"User-Agent": "other"})
    call(kubesim, "GET", "/readyz", headers={"User-Agent": "other"})
    counts = admin(kubesim, "GET", "counts").json
    assert counts == kubesim.counts()
    assert counts["total"] == 5
    by_agent = {c["userAgent"]: c for c in counts["clients"]}
    assert by_agent["agent/1"]["user"] == "kubesim-admin"
    assert by_agent["agent/1"]["requests"] == {"list configmaps": 2, "get configmaps": 1}
    assert by_agent["other"]["requests"] == {"list leases.coordination.k8s.io": 1,
                                             "get /readyz": 1}
    assert admin(kubesim, "DELETE", "counts").status == 200
    assert kubesim.counts() == {"total": 0, "clients": []}


def test_fault_status_by_path_and_verb_with_times(kubesim):
    fid = admin(kubesim, "POST", "faults", {"status": 500, "path": "/configmaps",
                                            "verbs": ["create"], "times": 2}).json["id"]
    assert [f["id"] for f in kubesim.faults()] == [fid]
    assert call(kubesim, "GET", CM).status == 200  # verb filter
    for _ in range(2):
        failed = call(kubesim, "POST", CM, {"metadata": {"generateName": "f-"}})
        assert failed.status == 500
        assert failed.json["reason"] == "InternalError"
        assert failed.json["message"] == "kubesim: injected fault"
    assert call(kubesim, "POST", CM, {"metadata": {"generateName": "f-"}}).status == 201
    assert kubesim.faults() == []


def test_fault_rate_duration_and_clear(kubesim):
    kubesim.inject_fault(status=503, rate=0.0)
    assert call(kubesim, "GET", CM).status == 200
    kubesim.clear_faults()
    kubesim.inject_fault(status=429, duration=0.3, path="^/api/v1/namespaces/default/")
    throttled = call(kubesim, "GET", CM)
    assert throttled.status == 429
    assert throttled.json["reason"] == "TooManyRequests"
    assert throttled.headers["retry-after"] == "1"
    deadline = time.monotonic() + 5
    while call(kubesim, "GET", CM).status == 429:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert kubesim.faults() == []
    fid = kubesim.inject_fault(status=500)
    assert admin(kubesim, "DELETE", f"faults/{fid}").status == 200
    assert call(kubesim, "GET", CM).status == 200


def test_quirk_official_client_retries_429_with_retry_after(kubesim):
    """urllib3 under the official client retries a 429 carrying Retry-After (API priority and
    fairness sends ``Retry-After: 1``): the caller sees success, the server saw two requests."""
    kubesim.inject_fault(status=429, times=1, verbs=["list"])
    kubesim.reset_counts()
    start = time.monotonic()
    items = client.CoreV1Api(kubesim.api_client()).list_namespaced_config_map("default").items
    assert items == []
    assert time.monotonic() - start >= 0.9
    assert kubesim.counts()["total"] == 2


def test_fault_latency(kubesim):
    kubesim.inject_fault(latency=0.3, verbs=["list"])
    start = time.monotonic()
    assert call(kubesim, "GET", CM).status == 200
    assert time.monotonic() - start >= 0.3


def test_fault_input_is_validated(kubesim):
    bad = admin(kubesim, "POST", "faults", {"status": 500, "colour": "red"})
    assert bad.status == 400
    assert "colour" in bad.json["message"]
    assert admin(kubesim, "POST", "faults", {"status": 200}).status == 400
    assert admin(kubesim, "POST", "faults", {"path": "("}).status == 400
    with pytest.raises(ValueError, match="rate"):
        kubesim.inject_fault(status=500, rate=2)


def _open_watch(sim):
    return client.CoreV1Api(sim.api_client()).list_namespaced_config_map(
        "default", watch=True, _preload_content=False, timeout_seconds=30,
        resource_version=str(sim.store.rv), _request_timeout=10)


def _wait_watches(sim, n: int) -> None:
    deadline = time.monotonic() + 5
    while sim.info()["watches"] != n:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_drop_watches_cuts_open_and_new_streams(kubesim):
    resp = _open_watch(kubesim)
    _wait_watches(kubesim, 1)
    kubesim.inject_fault(drop_watches=True, path="/configmaps", duration=5)
    with pytest.raises((urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError)):
        for _ in resp.stream(1024):
            pass
    again = _open_watch(kubesim)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for _ in again.stream(1024):
            pass
    _wait_watches(kubesim, 0)


def test_pause_modes(kubesim):
    kubesim.pause(1, "error")
    paused = call(kubesim, "GET", CM)
    assert paused.status == 503
    assert paused.json["reason"] == "ServiceUnavailable"
    assert admin(kubesim, "GET", "info").status == 200  # the admin API stays up
    admin(kubesim, "POST", "pause", {"seconds": 0.4, "mode": "hang"})
    start = time.monotonic()
    assert call(kubesim, "GET", CM).status == 200
    assert time.monotonic() - start >= 0.3
    kubesim.pause(1, "drop")
    with pytest.raises(urllib3.exceptions.HTTPError):
        client.CoreV1Api(kubesim.api_client()).list_namespaced_config_map(
            "default", _request_timeout=5)
    kubesim.pause(0)
    assert call(kubesim, "GET", CM).status == 200


def _refused(url: str) -> bool:
    host, port = url.split("//")[1].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_and_resume_listening_keeps_the_store_and_port(kubesim):
    call(kubesim, "POST", CM, {"metadata": {"name": "survivor"}})
    url = kubesim.url
    resp = _open_watch(kubesim)
    kubesim.stop_listening()
    assert _refused(url)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for _ in resp.stream(1024):
            pass
    kubesim.resume_listening()
    assert kubesim.url == url
    assert call(kubesim, "GET", f"{CM}/survivor").status == 200


def test_outage_over_http(kubesim):
    assert admin(kubesim, "POST", "outage", {"seconds": 0.5}).status == 200
    deadline = time.monotonic() + 3
    while not _refused(kubesim.url):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    while _refused(kubesim.url):
        assert time.monotonic() < deadline + 3
        time.sleep(0.05)
    assert call(kubesim, "GET", CM).status == 200


def test_compact_over_http(kubesim):
    rv = call(kubesim, "POST", CM, {"metadata": {"name": "a"}}).json["metadata"]["resourceVersion"]
    call(kubesim, "POST", CM, {"metadata": {"name": "b"}})
    reply = admin(kubesim, "POST", "compact").json
    assert reply == {"resourceVersion": str(kubesim.store.rv)}
    line = call(kubesim, "GET", f"{CM}?watch=1&resourceVersion={rv}").json
    assert line["type"] == "ERROR"
    assert line["object"]["code"] == 410


def test_component_health_switches_componentstatus_and_readyz(kubesim):
    assert call(kubesim, "GET", "/readyz").raw == b"ok"
    assert admin(kubesim, "PUT", "componentstatuses/etcd-0",
                 {"healthy": False, "message": "etcd cluster is unavailable"}).status == 200
    kubesim.set_component_health("scheduler", False, 'Get "https://127.0.0.1:10259/healthz": '
                                 "dial tcp 127.0.0.1:10259: connect: connection refused")
    cs = {i["metadata"]["name"]: i for i in call(kubesim, "GET",
                                                 "/api/v1/componentstatuses").json["items"]}
    assert cs["etcd-0"]["conditions"] == [{"type": "Healthy", "status": "False", "message": "",
                                           "error": "etcd cluster is unavailable"}]
    assert "connection refused" in cs["scheduler"]["conditions"][0]["error"]
    assert cs["controller-manager"]["conditions"][0]["status"] == "True"
    ready = call(kubesim, "GET", "/readyz?verbose")
    assert ready.status == 500
    text = ready.raw.decode()
    assert "[-]etcd failed: reason withheld" in text
    assert text.endswith("readyz check failed\n")
    assert call(kubesim, "GET", "/livez").status == 500
    assert admin(kubesim, "GET", "componentstatuses").json["etcd-0"]["healthy"] is False
    kubesim.set_component_health("etcd-0", True)
    assert call(kubesim, "GET", "/readyz").status == 200


def test_health_endpoints_verbose_and_single_checks(kubesim):
    verbose = call(kubesim, "GET", "/readyz?verbose", token="").raw.decode().splitlines()
    assert verbose[:3] == ["[+]ping ok", "[+]log ok", "[+]etcd ok"]
    assert "[+]poststarthook/rbac/bootstrap-roles ok" in verbose
    assert verbose[-1] == "readyz check passed"
    assert call(kubesim, "GET", "/livez?verbose").raw.decode().endswith("livez check passed\n")
    assert call(kubesim, "GET", "/healthz").raw == b"ok"
    assert call(kubesim, "GET", "/readyz/ping").raw == b"ok"
    assert call(kubesim, "GET", "/readyz/nope").status == 404
    excluded = call(kubesim, "GET", "/readyz?verbose&exclude=etcd").raw.decode()
    assert "[+]etcd ok" not in excluded


def test_issue_token_over_http(kubesim):
    token = admin(kubesim, "POST", "tokens", {"namespace": "default",
                                              "serviceAccount": "bot"}).json["token"]
    assert call(kubesim, "GET", "/api/v1/namespaces/default/serviceaccounts/bot").status == 200
    call(kubesim, "GET", "/version", token=token)
    users = {c["user"] for c in kubesim.counts()["clients"]}
    assert "system:serviceaccount:default:bot" in users
    missing = admin(kubesim, "POST", "tokens", {"namespace": "nope", "serviceAccount": "x"})
    assert missing.status == 400
    assert admin(kubesim, "POST", "tokens", {"namespace": "default"}).status == 400
