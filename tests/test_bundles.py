"""Kubernetes Events -> Datadog events: the Agent 6 format, bundling, splitting, filters."""

import copy
import re

import orjson
import pytest

from workers import bundles
from workers.bundles import (
    MAX_TEXT_CHARS,
    MalformedEvent,
    Occurrence,
    datadog_events,
    is_collected,
    last_seen,
    transform,
)
from workers.settings import EventTypeSelector

POD_UID = "e6417a7f-f566-11e7-9749-0e4863e1cbf4"
POD = "dca-789976f5d7-2ljx6"
TS = 709662600  # the Datadog Agent's own test timestamp
TS_RFC = "1992-06-27T16:30:00Z"
TS_GO = "1992-06-27 16:30:00 +0000 UTC"


def kubelet_event(reason="Pulled", message="Container image already present", **over):
    """A core/v1 Event as the API server returns it for a kubelet (old-style) event."""
    event = {
        "kind": "Event",
        "apiVersion": "v1",
        "metadata": {
            "name": f"{POD}.17a1b2c3d4e5f6a7",
            "namespace": "default",
            "uid": "4b0a1c55-2d7e-4a8e-9d36-1f1e2b7d9c01",
            "resourceVersion": "81234",
            "creationTimestamp": TS_RFC,
            "managedFields": [{"manager": "kubelet", "operation": "Update"}],
        },
        "involvedObject": {
            "kind": "Pod",
            "namespace": "default",
            "name": POD,
            "uid": POD_UID,
            "apiVersion": "v1",
            "resourceVersion": "81200",
            "fieldPath": "spec.containers{dca}",
        },
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": "machine-blue"},
        "firstTimestamp": TS_RFC,
        "lastTimestamp": TS_RFC,
        "count": 1,
        "type": "Normal",
        "eventTime": None,
        "reportingComponent": "kubelet",
        "reportingInstance": "machine-blue",
    }
    event.update(over)
    return event


def scheduler_event(**over):
    """A new-style event (events.k8s.io recorder) seen through core/v1: no source/count."""
    event = {
        "kind": "Event",
        "apiVersion": "v1",
        "metadata": {"name": f"{POD}.17a1", "namespace": "default", "resourceVersion": "81235"},
        "involvedObject": {"kind": "Pod", "namespace": "default", "name": POD, "uid": POD_UID,
                           "apiVersion": "v1", "resourceVersion": "81100"},
        "reason": "Scheduled",
        "message": f"Successfully assigned default/{POD} to machine-blue",
        "source": {},
        "firstTimestamp": None,
        "lastTimestamp": None,
        "type": "Normal",
        "eventTime": "1992-06-27T16:29:50.123456Z",
        "action": "Binding",
        "reportingComponent": "default-scheduler",
        "reportingInstance": "default-scheduler-control-plane",
    }
    event.update(over)
    return event


def node_event(**over):
    event = {
        "metadata": {"name": "node-1.17a2", "namespace": "default", "resourceVersion": "9"},
        "involvedObject": {"kind": "Node", "name": "node-1", "uid": "node-1"},
        "reason": "NodeNotReady",
        "message": "Node node-1 status is now: NodeNotReady",
        "source": {"component": "node-controller"},
        "firstTimestamp": TS_RFC,
        "lastTimestamp": TS_RFC,
        "count": 1,
        "type": "Normal",
    }
    event.update(over)
    return event


def deploy_event(**over):
    event = {
        "metadata": {"name": "nginx.17a3", "namespace": "web", "resourceVersion": "10"},
        "involvedObject": {"kind": "Deployment", "namespace": "web", "name": "nginx",
                           "uid": "b85978f5-2bf2-413f-9611-0b433d2cbf30", "apiVersion": "apps/v1"},
        "reason": "ScalingReplicaSet",
        "message": "Scaled up replica set nginx-b49f5958c to 1",
        "source": {"component": "deployment-controller"},
        "firstTimestamp": TS_RFC,
        "lastTimestamp": TS_RFC,
        "count": 1,
        "type": "Normal",
    }
    event.update(over)
    return event


def only(transformed):
    assert not transformed.malformed
    assert len(transformed.events) == 1
    return transformed.events[0]


def test_bundled_format_matches_the_agent_exactly():
    # The Datadog Agent's TestFormatEvent "basic event", field for field.
    out = only(transform([
        kubelet_event("Scheduled", "Successfully assigned dca-789976f5d7-2ljx6 to ip-10-0-0-54",
                      count=2, source={"component": "default-scheduler", "host": "machine-blue"}),
        kubelet_event("Started", "Started container", count=3,
                      source={"component": "default-scheduler", "host": "machine-blue"}),
    ]))
    assert out["msg_title"] == "Events from the Pod default/dca-789976f5d7-2ljx6"
    assert out["msg_text"] == (
        "%%% \n"
        "2 **Scheduled**: Successfully assigned dca-789976f5d7-2ljx6 to ip-10-0-0-54\n "
        "3 **Started**: Started container\n"
        f" \n _Events emitted by the default-scheduler seen at {TS_GO} since {TS_GO}_ \n"
        "\n %%%"
    )
    assert out["timestamp"] == TS
    assert out["priority"] == "normal"
    assert out["host"] == "machine-blue"
    assert out["alert_type"] == "info"
    assert out["aggregation_key"] == f"kubernetes_apiserver:{POD_UID}"
    assert out["source_type_name"] == "kubernetes"
    assert out["event_type"] == "kubernetes_apiserver"
    assert sorted(out["tags"]) == sorted([
        "kube_namespace:default", "kube_kind:Pod", "kubernetes_kind:Pod", "namespace:default",
        "source_component:default-scheduler", f"kube_name:{POD}", f"name:{POD}",
        f"pod_name:{POD}", "orchestrator:kubernetes",
    ])
    # The JSON field names and order of the Agent's serializer.
    assert list(out) == ["msg_title", "msg_text", "timestamp", "priority", "host", "tags",
                         "alert_type", "aggregation_key", "source_type_name", "event_type"]
    orjson.dumps(out)


def test_tilde_is_escaped_like_the_agent():
    out = only(transform([kubelet_event("Failed", "Error: error response: filepath: ~file~")]))
    assert "1 **Failed**: Error: error response: filepath: \\~file\\~\n" in out["msg_text"]


@pytest.mark.parametrize(("kind", "tag"), [
    ("Deployment", "kube_deployment:obj"), ("ReplicaSet", "kube_replica_set:obj"),
    ("CronJob", "kube_cronjob:obj"), ("Job", "kube_job:obj"), ("Service", "kube_service:obj"),
    ("DaemonSet", "kube_daemon_set:obj"), ("StatefulSet", "kube_stateful_set:obj"),
])
def test_kind_tags_as_the_agent_tagger(kind, tag):
    event = deploy_event(involvedObject={"kind": kind, "name": "obj", "namespace": "web",
                                         "uid": "u-1"})
    out = only(transform([event], tags=("env:prod", "team:core")))
    assert tag in out["tags"]
    assert {f"kube_kind:{kind}", "kube_name:obj", "kube_namespace:web",
            "source_component:deployment-controller", "orchestrator:kubernetes",
            "env:prod", "team:core"} <= set(out["tags"])
    assert len(out["tags"]) == len(set(out["tags"]))


def test_one_bundle_per_object_and_type_with_counts_summed():
    events = [
        kubelet_event("BackOff", "Back-off restarting failed container", type="Warning", count=4),
        kubelet_event("BackOff", "Back-off restarting failed container", type="Warning", count=5),
        kubelet_event("Pulled", "Container image already present"),
        scheduler_event(),
        deploy_event(),
        node_event(),
    ]
    out = transform(events, hostname="cluster-agent-0")
    assert not out.malformed
    by_title = {(e["msg_title"], e["alert_type"]): e for e in out.events}
    assert len(out.events) == 4
    warning = by_title[(f"Events from the Pod default/{POD}", "warning")]
    assert "9 **BackOff**: Back-off restarting failed container\n" in warning["msg_text"]
    info = by_title[(f"Events from the Pod default/{POD}", "info")]
    assert "1 **Pulled**: Container image already present\n" in info["msg_text"]
    assert "1 **Scheduled**: Successfully assigned" in info["msg_text"]
    # Both components emitted into this bundle; the range spans the scheduler's eventTime.
    assert "emitted by the kubelet, default-scheduler seen at" in info["msg_text"]
    assert "since 1992-06-27 16:29:50 +0000 UTC_" in info["msg_text"]
    assert {"source_component:kubelet", "source_component:default-scheduler"} <= set(info["tags"])
    node = by_title[("Events from the Node node-1", "info")]
    assert node["host"] == "node-1"  # a Node's events belong to that node
    assert not any(t.startswith("kube_namespace:") for t in node["tags"])
    deploy = by_title[("Events from the Deployment web/nginx", "info")]
    assert deploy["host"] == "cluster-agent-0"  # no node: the agent's own hostname


def test_every_message_appears_in_the_text():
    events = [kubelet_event(f"Reason{i % 7}", f"message marker-{i:05d} here") for i in range(300)]
    out = transform(events)
    text = "".join(e["msg_text"] for e in out.events)
    for i in range(300):
        assert text.count(f"marker-{i:05d}") == 1


def test_text_over_4000_chars_is_split_into_complete_events():
    events = [kubelet_event("Unhealthy", f"Readiness probe failed marker-{i:04d} " + "x" * 180,
                            lastTimestamp=f"1992-06-27T16:{30 + i % 20}:00Z") for i in range(120)]
    out = transform(events, tags=("env:prod",))
    assert not out.malformed
    assert len(out.events) >= 6
    first = out.events[0]
    for ev in out.events:
        assert len(ev["msg_text"]) <= MAX_TEXT_CHARS
        assert ev["msg_text"].startswith("%%% \n")
        assert ev["msg_text"].endswith("_ \n\n %%%")
        for key in ("msg_title", "tags", "aggregation_key", "host", "timestamp", "alert_type"):
            assert ev[key] == first[key]
    text = "".join(e["msg_text"] for e in out.events)
    assert sorted(re.findall(r"marker-\d{4}", text)) == [f"marker-{i:04d}" for i in range(120)]
    assert first["timestamp"] == TS + 19 * 60  # the latest lastTimestamp


def test_a_single_huge_message_is_split_not_truncated():
    words = [f"w{i:05d}~" for i in range(1800)]  # ~14 KB with tildes to escape
    message = " ".join(words)
    out = transform([kubelet_event("Failed", message, count=3)])
    assert len(out.events) >= 4
    parts = []
    for n, ev in enumerate(out.events, 1):
        assert len(ev["msg_text"]) <= MAX_TEXT_CHARS
        match = re.search(r"3 \*\*Failed\*\*: \[part (\d+)/(\d+)\] (.*?)\n \n _Events",
                          ev["msg_text"], re.S)
        assert match, ev["msg_text"][:200]
        assert int(match.group(1)) == n
        assert int(match.group(2)) == len(out.events)
        parts.append(match.group(3))
    assert "".join(parts).replace("\\~", "~") == message  # cut only at whitespace


def test_a_huge_message_without_whitespace_never_cuts_an_escape():
    message = "~" * 9000
    out = transform([kubelet_event("Failed", message)])
    pieces = [re.search(r"\] (.*?)\n \n _Events", e["msg_text"], re.S).group(1)
              for e in out.events]
    for piece in pieces:
        assert re.fullmatch(r"(\\~)+", piece)
    assert sum(p.count("~") for p in pieces) == 9000


def test_unbundled_format():
    events = [kubelet_event("BackOff", "Back-off pulling image ~x~", type="Warning", count=7),
              scheduler_event(), node_event()]
    out = transform(events, unbundle=True, tags=("env:prod",), hostname="agent-0")
    assert not out.malformed
    backoff, scheduled, node = out.events
    assert backoff["msg_title"] == f"Pod default/{POD}: BackOff"
    assert backoff["msg_text"] == "Back-off pulling image ~x~"  # as the Agent: raw message
    assert backoff["alert_type"] == "warning"
    assert backoff["host"] == "machine-blue"
    assert backoff["tags"] == sorted(set(backoff["tags"]))
    assert {"event_reason:BackOff", "source_component:kubelet", "orchestrator:kubernetes",
            "kube_kind:Pod", f"kube_name:{POD}", "kube_namespace:default", f"pod_name:{POD}",
            "env:prod"} <= set(backoff["tags"])
    assert scheduled["msg_title"] == f"Pod default/{POD}: Scheduled"
    assert scheduled["timestamp"] == TS - 10  # eventTime when there is no lastTimestamp
    assert "source_component:default-scheduler" in scheduled["tags"]
    assert scheduled["host"] == "agent-0"
    assert node["msg_title"] == "Node node-1: NodeNotReady"
    assert node["host"] == "node-1"


def test_unbundled_huge_message_is_split():
    message = " ".join(f"token{i:05d}" for i in range(1000))
    out = transform([kubelet_event("Failed", message)], unbundle=True)
    assert len(out.events) == 3
    texts = [e["msg_text"] for e in out.events]
    assert all(len(t) <= MAX_TEXT_CHARS for t in texts)
    assert [t[:12] for t in texts] == ["[part 1/3] t", "[part 2/3] t", "[part 3/3] t"]
    assert "".join(re.sub(r"^\[part \d/3\] ", "", t) for t in texts) == message
    assert len({e["msg_title"] for e in out.events}) == 1


def test_series_event_uses_series_count_and_last_observed_time():
    event = scheduler_event(reason="FailedScheduling", type="Warning",
                            message="0/3 nodes are available",
                            series={"count": 12, "lastObservedTime": "1992-06-27T16:40:00.5Z"})
    out = only(transform([event]))
    assert "12 **FailedScheduling**: 0/3 nodes are available" in out["msg_text"]
    assert out["timestamp"] == TS + 600
    assert last_seen(event) == pytest.approx(TS + 600.5)


def test_empty_reason_or_message_is_kept():
    out = only(transform([kubelet_event("", "")]))
    assert "1 ****: \n" in out["msg_text"]


@pytest.mark.parametrize(("raw", "field"), [
    (["not", "a", "dict"], "not an object but list"),
    (None, "not an object but NoneType"),
    ({"metadata": {"name": "e1", "namespace": "ns"}}, "involvedObject is missing"),
    (kubelet_event(involvedObject={"name": "x"}), "involvedObject.kind is empty"),
    (kubelet_event(involvedObject={"kind": "Pod"}), "involvedObject.name is empty"),
    (kubelet_event(lastTimestamp="yesterday"), "lastTimestamp is not a timestamp"),
    (kubelet_event(firstTimestamp=12345), "firstTimestamp is not a timestamp"),
    (kubelet_event(firstTimestamp=["2020"]), "firstTimestamp is not a timestamp"),
    (kubelet_event(count="three"), "count is not an integer"),
    (kubelet_event(source="kubelet"), "source is not an object"),
    (kubelet_event(firstTimestamp=None, lastTimestamp=None, metadata={"name": "e"}),
     "no timestamp"),
])
def test_malformed_events_are_reported_not_raised(raw, field):
    good = kubelet_event()
    out = transform([good, raw, copy.deepcopy(good)])
    assert len(out.events) == 1
    assert len(out.malformed) == 1
    error = out.malformed[0]
    assert isinstance(error, MalformedEvent)
    assert field in str(error)
    assert "\n" not in str(error)
    with pytest.raises(MalformedEvent):
        last_seen(raw)


def test_malformed_error_names_the_event():
    out = transform([kubelet_event(count="x")])
    assert str(out.malformed[0]).startswith(f"malformed event default/{POD}.17a1b2c3d4e5f6a7:")
    assert out.malformed[0].resource_version == "81234"


def test_creation_timestamp_is_the_last_resort():
    event = kubelet_event(firstTimestamp=None, lastTimestamp=None)
    assert only(transform([event]))["timestamp"] == TS


def test_go_zero_time_means_unset():
    event = kubelet_event(firstTimestamp="0001-01-01T00:00:00Z", lastTimestamp=None,
                          eventTime="1992-06-27T16:30:00.000001Z")
    assert only(transform([event]))["timestamp"] == TS


def sel(kind="", source="", reasons=()):
    return EventTypeSelector(kind=kind, source=source, reasons=tuple(reasons))


@pytest.mark.parametrize(("selectors", "event", "expected"), [
    ((), kubelet_event(), True),
    ((sel(kind="Pod"),), kubelet_event(), True),
    ((sel(kind="Node"),), kubelet_event(), False),
    ((sel(source="kubelet"),), kubelet_event(), True),
    ((sel(source="default-scheduler"),), scheduler_event(), True),  # reportingComponent
    ((sel(kind="Pod", reasons=["BackOff", "Failed"]),), kubelet_event("Failed", "x"), True),
    ((sel(kind="Pod", reasons=["BackOff"]),), kubelet_event("Pulled", "x"), False),
    ((sel(kind="Pod", source="kubelet", reasons=["Pulled"]),), kubelet_event(), True),
    ((sel(kind="Pod", source="other"),), kubelet_event(), False),
    ((sel(kind="Node"), sel(source="deployment-controller")), deploy_event(), True),
    ((sel(reasons=["NodeNotReady"]),), node_event(), True),
    ((sel(kind="Pod"),), {"reason": "x"}, False),
    ((sel(kind="Pod"),), "garbage", True),  # malformed passes: transform reports it
])
def test_collected_event_types(selectors, event, expected):
    assert is_collected(event, selectors) is expected


# -- the hot path: occurrences read once, one-occurrence bundles built directly -----------

def varied_events():
    """Events covering the format's corners: namespaces, uids, components, tildes, sizes."""
    events = [kubelet_event(), scheduler_event(), node_event(), deploy_event(),
              kubelet_event("Failed", "a ~tilde~ here", source={"component": "~kube~let"}),
              kubelet_event(source={}, reportingComponent=""),
              kubelet_event(involvedObject={"kind": "Pod", "name": "no-uid", "namespace": "x"}),
              kubelet_event(involvedObject={"kind": "Widget", "name": "w", "uid": "w-1"}),
              kubelet_event("Huge", "y " * 2100, count=4),
              kubelet_event("BackOff", "Back-off", type="Warning", count=9),
              kubelet_event(series={"count": 5, "lastObservedTime": "1992-06-27T16:40:00Z"}),
              kubelet_event(lastTimestamp="1992-06-27T16:31:00Z", reason=None, message=5)]
    for i in range(40):  # several occurrences per object, several objects per kind
        events.append(kubelet_event(
            f"Reason{i % 3}", f"message {i % 5}", count=1 + i % 4,
            type="Warning" if i % 7 == 0 else "Normal",
            involvedObject={"kind": ("Pod", "Node", "Deployment")[i % 3], "name": f"o-{i % 6}",
                            "namespace": "" if i % 3 == 1 else "ns", "uid": f"u-{i % 6}"},
            source={"component": ("kubelet", "", "controller")[i % 3], "host": f"n{i % 2}"}))
    return events


@pytest.mark.parametrize("unbundle", [False, True])
@pytest.mark.parametrize("tags", [(), ("env:prod", "kube_kind:Pod", "env:prod")])
def test_datadog_events_of_occurrences_are_what_transform_makes(unbundle, tags):
    raws = varied_events()
    expected = transform(copy.deepcopy(raws), unbundle=unbundle, tags=tags, hostname="h")
    assert not expected.malformed
    got = datadog_events([Occurrence(r) for r in raws], unbundle=unbundle, tags=tags,
                         hostname="h")
    assert orjson.dumps(got) == orjson.dumps(expected.events)


@pytest.mark.parametrize("tags", [(), ("env:prod", "kube_kind:Pod")])
def test_one_occurrence_bundles_are_what_the_general_bundle_makes(tags):
    for raw in varied_events():
        occ = Occurrence(raw)
        direct: list = []
        general: list = []
        if not bundles._single(occ, tags, "h", direct):
            assert len(_text(occ)) > MAX_TEXT_CHARS  # only a text too long goes the long way
            continue
        bundles._Bundle([occ]).emit(tags, "h", general)
        assert orjson.dumps(direct) == orjson.dumps(general), raw["reason"]


def _text(occ):
    return f"{occ.count} **{occ.reason}**: {occ.message}".replace("~", "\\~")


@pytest.mark.parametrize("extra", [-1, 0, 1, 2])
def test_a_single_occurrence_right_at_the_text_limit(extra):
    probe = only(transform([kubelet_event("Big", "m")]))["msg_text"]
    message = "m" * (MAX_TEXT_CHARS - len(probe) + 1 + extra)
    out = transform([kubelet_event("Big", message)])
    texts = [e["msg_text"] for e in out.events]
    assert all(len(t) <= MAX_TEXT_CHARS for t in texts)
    assert len(texts) == (1 if extra <= 0 else 2)
    if extra <= 0:
        assert len(texts[0]) == MAX_TEXT_CHARS + extra
    assert "".join(re.sub(r"^.*\*\*Big\*\*: (\[part \d/\d\] )?", "", t.split("\n")[1])
                   for t in texts) == message


def test_the_quick_read_of_an_occurrence_is_the_careful_one():
    odd = [kubelet_event(firstTimestamp="1992-06-27T16:29:00Z"), kubelet_event(count=0),
           kubelet_event(count=True)]
    for raw in [*varied_events(), *odd]:
        try:
            occ = Occurrence(raw)
        except MalformedEvent as exc:
            with pytest.raises(MalformedEvent, match=re.escape(exc.problem)):
                Occurrence.__new__(Occurrence)._read(raw)
            continue
        careful = Occurrence.__new__(Occurrence)
        careful._read(raw)
        for name in Occurrence.__slots__:
            assert getattr(occ, name) == getattr(careful, name), name


def test_every_datadog_event_owns_its_tag_list():
    first = only(transform([kubelet_event()]))
    first["tags"].append("mutated:by-a-caller")
    assert "mutated:by-a-caller" not in only(transform([kubelet_event()]))["tags"]
    split = transform([kubelet_event("Failed", "x " * 3000)]).events
    assert len(split) > 1
    assert len({id(e["tags"]) for e in split}) == len(split)
