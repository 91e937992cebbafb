"""The intake client against a real local HTTP intake: format, headers, every response class."""

import io
import itertools
import threading
import time
import zlib
from importlib import metadata

import orjson
import pytest
import trustme
from intake_server import LocalIntake
from loguru import logger

from workers.backoff import Backoff
from workers.bundles import transform
from workers.intake import IntakeClient, Outcome, _bypasses_proxy, intake_url
from workers.payloads import (
    batches,
    encode_events,
    events_body,
    events_payload,
    service_check,
    whole_events_payload,
)
from workers.settings import IntakeSettings

KEY = "0123456789abcdef0123456789abcdef"
FAST = Backoff(base_s=0.01, factor=2, cap_s=0.05, jitter=0)


def dd_event(i, size=100):
    return {
        "msg_title": f"Events from the Pod default/pod-{i}",
        "msg_text": f"%%% \n1 **Started**: marker-{i:05d} {'x' * size}\n \n %%%",
        "timestamp": 1700000000 + i,
        "priority": "normal",
        "host": "node-1",
        "tags": ["kube_kind:Pod", f"kube_name:pod-{i}", "orchestrator:kubernetes"],
        "alert_type": "info",
        "aggregation_key": f"kubernetes_apiserver:uid-{i}",
        "source_type_name": "kubernetes",
        "event_type": "kubernetes_apiserver",
    }


def markers(events):
    return sorted(e["msg_text"].split("marker-")[1][:5] for e in events)


@pytest.fixture
def intake():
    with LocalIntake() as server:
        yield server


@pytest.fixture
def logs():
    lines = []
    sink = logger.add(lines.append, level="DEBUG", format="{level} {message}")
    yield lines
    logger.remove(sink)


def client_for(intake, **kwargs):
    settings = IntakeSettings(api_key=KEY, dd_url=intake.url, hostname="cluster-agent-0",
                              tags=("env:test",))
    kwargs.setdefault("backoff", FAST)
    return IntakeClient(settings, **kwargs)


def test_events_payload_headers_and_compression(intake):
    k8s = {
        "metadata": {"name": "p.1", "namespace": "default", "resourceVersion": "7"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "u1"},
        "reason": "Started", "message": "Started container app", "type": "Normal",
        "source": {"component": "kubelet", "host": "node-1"}, "count": 1,
        "firstTimestamp": "2024-05-01T10:00:00Z", "lastTimestamp": "2024-05-01T10:00:00Z",
    }
    events = transform([k8s]).events
    with client_for(intake) as client:
        delivery = client.deliver_events(events, threading.Event())
    assert delivery.outcome is Outcome.ACKNOWLEDGED
    assert delivery.done
    assert delivery.acknowledged == 1
    (request,) = intake.requests()
    assert (request.method, request.path) == ("POST", "/intake/")
    version = metadata.version("kube-event-agent")
    assert request.headers["dd-api-key"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-encoding"] == "deflate"
    assert request.headers["user-agent"] == f"kube-event-agent/{version}"
    assert request.headers["dd-agent-version"] == version
    assert orjson.loads(zlib.decompress(request.raw)) == request.body
    assert request.body == {
        "apiKey": "",
        "events": {"kubernetes": events},
        "internalHostname": "cluster-agent-0",
    }
    assert KEY.encode() not in zlib.decompress(request.raw)
    assert intake.events() == events


def test_service_checks_payload(intake):
    checks = [
        service_check("kube_apiserver_controlplane.up", 0, host="agent-0",
                      tags=["component:etcd-0", "env:test"], timestamp=1700000000),
        service_check("kube_apiserver_controlplane.up", 2, host="agent-0",
                      message="Get https://127.0.0.1:10251/healthz: connection refused",
                      tags=["component:scheduler"], timestamp=1700000000.7),
    ]
    with client_for(intake) as client:
        delivery = client.deliver_service_checks(checks, threading.Event())
    assert delivery.outcome is Outcome.ACKNOWLEDGED
    assert delivery.acknowledged == 2
    (request,) = intake.requests()
    assert request.path == "/api/v1/check_run"
    assert request.headers["content-encoding"] == "deflate"
    assert request.body == intake.service_checks()
    assert request.body[1] == {
        "check": "kube_apiserver_controlplane.up", "host_name": "agent-0",
        "timestamp": 1700000000, "status": 2,
        "message": "Get https://127.0.0.1:10251/healthz: connection refused",
        "tags": ["component:scheduler"],
    }


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_any_2xx_is_an_acknowledgement(intake, status):
    intake.respond(status)
    with client_for(intake) as client:
        delivery = client.deliver_events([dd_event(1)], threading.Event())
        assert delivery.outcome is Outcome.ACKNOWLEDGED
        assert client.stats()[f"intake_responses_{status}_total"] == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 409, 302])
def test_transient_answers_are_retried_until_acknowledged(intake, status):
    intake.respond(status, status, status)
    with client_for(intake) as client:
        delivery = client.deliver_events([dd_event(i) for i in range(3)], threading.Event())
        stats = client.stats()
    assert delivery.outcome is Outcome.ACKNOWLEDGED
    assert [r.status for r in intake.requests()] == [status] * 3 + [202]
    assert markers(intake.events()) == ["00000", "00001", "00002"]
    assert stats["intake_retries_total"] == 3
    assert stats[f"intake_responses_{status}_total"] == 3
    assert stats["intake_payloads_total"] == 4


def test_retries_follow_the_backoff_policy(intake):
    policy = Backoff(base_s=0.05, factor=2, cap_s=0.2, jitter=0)
    intake.respond(503, 503, 503, 503)
    with client_for(intake, backoff=policy) as client:
        client.deliver_events([dd_event(1)], threading.Event())
    arrivals = [r.at for r in intake.requests()]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    expected = [policy.nominal(n) for n in range(4)]
    assert expected == [0.05, 0.1, 0.2, 0.2]
    for gap, nominal in zip(gaps, expected, strict=True):
        assert gap >= nominal - 0.01  # never earlier than the policy (later if loaded)


def test_retry_after_is_honoured(intake):
    intake.handler = lambda req: (429, b"slow down", {"Retry-After": "0.3"})
    with client_for(intake, backoff=Backoff(base_s=0.01, cap_s=1, jitter=0)) as client:
        thread = threading.Thread(target=client.deliver_events, args=([dd_event(1)],
                                                                      threading.Event()))
        thread.start()
        intake.wait_for(lambda: len(intake.requests()) >= 2)
        intake.handler = None
        thread.join(10)
    first, second = intake.requests()[:2]
    assert second.at - first.at >= 0.29


def test_400_is_logged_and_skipped_without_retry(intake, logs):
    intake.respond(400)
    with client_for(intake) as client:
        delivery = client.deliver_events([dd_event(1), dd_event(2)], threading.Event())
        assert client.stats()["intake_items_skipped_total"] == 2
    assert delivery.outcome is Outcome.SKIPPED
    assert delivery.done  # the token may move past it
    assert (delivery.acknowledged, delivery.skipped) == (0, 2)
    assert "HTTP 400" in delivery.detail
    assert len(intake.requests()) == 1
    assert any("ERROR intake skipped 2 item(s)" in line and "HTTP 400" in line for line in logs)


def test_404_is_skipped(intake):
    intake.respond(404)
    with client_for(intake) as client:
        delivery = client.deliver_events([dd_event(1)], threading.Event())
    assert delivery.outcome is Outcome.SKIPPED
    assert len(intake.requests()) == 1


def test_413_splits_in_halves_until_payloads_fit(intake):
    intake.handler = lambda req: 413 if len(req.body["events"]["kubernetes"]) > 3 else 202
    events = [dd_event(i) for i in range(20)]
    with client_for(intake) as client:
        delivery = client.deliver_events(events, threading.Event())
        assert client.stats()["intake_payloads_split_total"] >= 4
    assert delivery.outcome is Outcome.ACKNOWLEDGED
    assert delivery.acknowledged == 20
    assert markers(intake.events()) == [f"{i:05d}" for i in range(20)]  # each exactly once
    assert all(len(r.body["events"]["kubernetes"]) <= 3
               for r in intake.requests() if r.status == 202)


def test_a_single_event_still_413_is_skipped_and_the_rest_delivered(intake, logs):
    def handler(req):
        return 413 if b"marker-00005" in zlib.decompress(req.raw) else 202

    intake.handler = handler
    with client_for(intake) as client:
        delivery = client.deliver_events([dd_event(i) for i in range(8)], threading.Event())
    assert delivery.outcome is Outcome.SKIPPED
    assert (delivery.acknowledged, delivery.skipped) == (7, 1)
    assert "HTTP 413" in delivery.detail
    assert markers(intake.events()) == ["00000", "00001", "00002", "00003", "00004",
                                        "00006", "00007"]
    assert any("skipped 1 item(s)" in line for line in logs)


def test_403_is_forbidden_then_waits_before_trying_again(intake, logs):
    intake.respond(403)
    with client_for(intake, forbidden_pause_s=0.5) as client:
        first = client.deliver_events([dd_event(1)], threading.Event())
        assert first.outcome is Outcome.FORBIDDEN
        assert not first.done  # the token stays where it is
        assert client.forbidden
        assert client.stats()["intake_forbidden"] == 1
        assert len(intake.requests()) == 1  # no retry storm
        started = time.monotonic()
        waits = []
        second = client.deliver_events([dd_event(1)], threading.Event(),
                                       on_wait=lambda: waits.append(1))
        assert time.monotonic() - started >= 0.45  # paused before trying again
        assert waits  # the caller could heartbeat meanwhile
        assert second.outcome is Outcome.ACKNOWLEDGED
        assert not client.forbidden
        assert client.stats()["intake_forbidden"] == 0
    assert any("invalid API key" in line for line in logs)


def test_forbidden_pause_is_interrupted_by_stop(intake):
    intake.respond(403)
    with client_for(intake, forbidden_pause_s=300) as client:
        client.deliver_events([dd_event(1)], threading.Event())
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        delivery = client.deliver_events([dd_event(1)], stop)
    assert delivery.outcome is Outcome.STOPPED
    assert time.monotonic() - started < 10
    assert len(intake.requests()) == 1


def test_connection_refused_then_back_on_the_same_port(intake):
    with client_for(intake) as client:
        assert client.deliver_events([dd_event(0)], threading.Event()).done  # keep-alive conn
        intake.down()
        result = []
        thread = threading.Thread(
            target=lambda: result.append(client.deliver_events([dd_event(1)], threading.Event()))
        )
        thread.start()
        intake.wait_for(lambda: client.stats().get("intake_connection_errors_total", 0) >= 3)
        assert thread.is_alive()  # blocked: that is the backpressure
        intake.up()
        thread.join(20)
        assert result[0].outcome is Outcome.ACKNOWLEDGED
    assert markers(intake.events()) == ["00000", "00001"]


def test_stop_interrupts_endless_retries(intake):
    intake.handler = lambda req: 503
    stop = threading.Event()
    waits = []
    with client_for(intake) as client:
        threading.Timer(0.3, stop.set).start()
        delivery = client.deliver_events([dd_event(1)], stop, on_wait=lambda: waits.append(1))
    assert delivery.outcome is Outcome.STOPPED
    assert not delivery.done
    assert len(intake.requests()) >= 3
    assert waits


def test_payloads_respect_item_and_byte_limits(intake):
    events = [dd_event(i, size=900) for i in range(30)]
    with client_for(intake, max_items=7, max_bytes=5000) as client:
        assert client.deliver_events(events, threading.Event()).acknowledged == 30
    sizes = [len(zlib.decompress(r.raw)) for r in intake.requests()]
    counts = [len(r.body["events"]["kubernetes"]) for r in intake.requests()]
    assert max(sizes) <= 5000
    assert max(counts) <= 7
    assert sum(counts) == 30
    assert markers(intake.events()) == [f"{i:05d}" for i in range(30)]


def test_batches_helper():
    encoded = encode_events([dd_event(i) for i in range(10)])
    assert [len(b) for b in batches(encoded, max_items=4, max_bytes=10**6)] == [4, 4, 2]
    one = len(encoded[0][0])
    assert [len(b) for b in batches(encoded, max_items=100, max_bytes=one * 3)] == [2] * 5
    assert [len(b) for b in batches(encoded, max_items=100, max_bytes=10)] == [1] * 10
    assert batches([], max_items=5, max_bytes=100) == []


def test_events_of_several_sources_are_grouped(intake):
    other = dict(dd_event(2), source_type_name="kubernetes cluster autoscaler")
    with client_for(intake) as client:
        client.deliver_events([dd_event(1), other, dd_event(3)], threading.Event())
    body = intake.requests()[0].body
    assert sorted(body["events"]) == ["kubernetes", "kubernetes cluster autoscaler"]
    assert len(body["events"]["kubernetes"]) == 2


def test_no_api_key_writes_json_lines_to_stdout():
    out = io.BytesIO()
    client = IntakeClient(IntakeSettings(api_key=""), stdout=out)
    events = [dd_event(1), dd_event(2)]
    assert client.deliver_events(events, threading.Event()).acknowledged == 2
    checks = [service_check("kube_apiserver_controlplane.up", 0, host="h", timestamp=1)]
    assert client.deliver_service_checks(checks, threading.Event()).done
    lines = out.getvalue().splitlines()
    assert [orjson.loads(line) for line in lines] == [*events, *checks]
    assert "stdout" in repr(client)


def test_the_api_key_never_leaks(intake, logs):
    # An intake that echoes the key back in its error bodies, plus every failure class.
    echo = f'{{"errors": ["bad key {KEY}"]}}'.encode()
    intake.respond(503)
    with client_for(intake, forbidden_pause_s=0.01) as client:
        intake.handler = lambda req: (400, echo)
        skipped = client.deliver_events([dd_event(1)], threading.Event())
        intake.handler = lambda req: (403, echo)
        forbidden = client.deliver_events([dd_event(2)], threading.Event())
        intake.handler = None
        intake.down()
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        stopped = client.deliver_events([dd_event(3)], stop)
        intake.up()
        rendered = [repr(client), str(client.stats()), repr(skipped), repr(forbidden),
                    repr(stopped), *logs]
    assert skipped.outcome is Outcome.SKIPPED
    assert forbidden.outcome is Outcome.FORBIDDEN
    assert "***" in skipped.detail
    assert any("Connection refused" in line or "NewConnectionError" in line for line in logs)
    for text in rendered:
        assert KEY not in text
        assert KEY[:12] not in text


def test_api_key_is_stripped_and_checked(intake):
    settings = IntakeSettings(api_key=f" {KEY}\n", dd_url=intake.url)
    with IntakeClient(settings) as client:
        assert client.deliver_events([dd_event(1)], threading.Event()).done
    assert intake.requests()[0].headers["dd-api-key"] == KEY
    with pytest.raises(ValueError, match="api_key") as error:
        IntakeClient(IntakeSettings(api_key="abc\x00def"))
    assert "abc" not in str(error.value)


def test_url_from_site_or_dd_url():
    assert intake_url(IntakeSettings()) == "https://app.datadoghq.com"
    assert intake_url(IntakeSettings(site="datadoghq.eu")) == "https://app.datadoghq.eu"
    assert intake_url(IntakeSettings(site="us5.datadoghq.com")) == "https://app.us5.datadoghq.com"
    assert intake_url(IntakeSettings(dd_url="http://127.0.0.1:8080/")) == "http://127.0.0.1:8080"


def test_http_proxy_with_credentials(intake):
    # The local intake plays the proxy: a proxied request carries the absolute URL.
    settings = IntakeSettings(api_key=KEY, dd_url="http://intake.example.invalid:9",
                              proxy_http=f"http://user:s3cr%40t@127.0.0.1:{intake.port}")
    with IntakeClient(settings, backoff=FAST) as client:
        assert client.deliver_events([dd_event(1)], threading.Event()).done
        assert "s3cr" not in repr(client)
    (request,) = intake.requests()
    assert request.path == "http://intake.example.invalid:9/intake/"
    assert request.headers["proxy-authorization"] == "Basic dXNlcjpzM2NyQHQ="  # user:s3cr@t
    assert request.headers["dd-api-key"] == KEY


def test_no_proxy_goes_direct(intake):
    settings = IntakeSettings(api_key=KEY, dd_url=intake.url,
                              proxy_http="http://127.0.0.1:9", no_proxy=("127.0.0.1",))
    with IntakeClient(settings, backoff=FAST) as client:
        assert client.deliver_events([dd_event(1)], threading.Event()).done
    assert intake.requests()[0].path == "/intake/"


@pytest.mark.parametrize(("host", "port", "entries", "expected"), [
    ("app.datadoghq.com", 443, ["*"], True),
    ("app.datadoghq.com", 443, ["datadoghq.com"], True),
    ("app.datadoghq.com", 443, [".datadoghq.com"], True),
    ("app.datadoghq.com", 443, ["*.datadoghq.com"], True),
    ("app.datadoghq.com", 443, ["app.datadoghq.com:443"], True),
    ("app.datadoghq.com", 443, ["app.datadoghq.com:8443"], False),
    ("app.datadoghq.com", 443, ["hq.com", "example.com"], False),
    ("10.1.2.3", 80, ["10.0.0.0/8"], True),
    ("10.1.2.3", 80, ["192.168.0.0/16", ""], False),
    ("::1", 80, ["::1"], True),
])
def test_no_proxy_rules(host, port, entries, expected):
    assert _bypasses_proxy(host, port, entries) is expected


def test_tls_is_verified():
    ca = trustme.CA()
    with LocalIntake(tls=ca) as intake:
        settings = IntakeSettings(api_key=KEY, dd_url=intake.url)
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        with IntakeClient(settings, backoff=FAST) as untrusting:
            assert untrusting.deliver_events([dd_event(1)], stop).outcome is Outcome.STOPPED
            assert untrusting.stats()["intake_connection_errors_total"] >= 1
        assert intake.requests() == []
        with IntakeClient(settings, backoff=FAST, ca_certs=intake.ca_file) as trusting:
            assert trusting.deliver_events([dd_event(1)], threading.Event()).done
        assert len(intake.events()) == 1


def test_a_batch_of_one_source_type_is_encoded_in_one_call_byte_for_byte():
    events = [dd_event(i) for i in range(20)]
    whole = whole_events_payload(events, "cluster-agent-0", 500, 2**21)
    assert whole == events_payload(encode_events(events), "cluster-agent-0")
    assert events_body(events[:3], "h") == events_payload(encode_events(events[:3]), "h")
    other = dict(dd_event(2), source_type_name="kubernetes cluster autoscaler")
    assert whole_events_payload([dd_event(1), other], "h", 500, 2**21) is None
    assert whole_events_payload(events, "h", 19, 2**21) is None  # too many for one payload
    assert whole_events_payload(events, "cluster-agent-0", 500, len(whole) - 1) is None
    assert whole_events_payload([], "h", 500, 2**21) is None


def test_the_one_payload_batch_reaches_the_intake_as_it_was(intake):
    events = [dd_event(i) for i in range(50)]
    with client_for(intake) as client:
        assert client.deliver_events(events, threading.Event()).acknowledged == 50
    (request,) = intake.requests()
    assert zlib.decompress(request.raw) == events_payload(encode_events(events),
                                                          "cluster-agent-0")
