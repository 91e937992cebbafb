"""kubesim list semantics: pagination, consistent continue tokens, selectors, Tables."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubesim_http import call

CM = "/api/v1/namespaces/default/configmaps"
EVENTS = "/api/v1/namespaces/default/events"


def _seed_configmaps(sim, n: int, namespace: str = "default") -> None:
    sim.create_many("configmaps", [
        {"metadata": {"name": f"cm-{i:03d}", "labels": {"tier": "a" if i % 2 else "b",
                                                         "n": str(i)}}}
        for i in range(n)], namespace)


def test_pagination_with_continue_returns_everything_once(kubesim):
    _seed_configmaps(kubesim, 25)
    core = client.CoreV1Api(kubesim.api_client())
    names, token, pages = [], None, 0
    first_rv = None
    while True:
        page = core.list_namespaced_config_map("default", limit=10, _continue=token)
        pages += 1
        names += [i.metadata.name for i in page.items]
        first_rv = first_rv or page.metadata.resource_version
        assert page.metadata.resource_version == first_rv
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == 25 - len(names)
    assert pages == 3
    assert names == sorted(f"cm-{i:03d}" for i in range(25))


def test_continue_reads_a_consistent_snapshot(kubesim):
    _seed_configmaps(kubesim, 6)
    first = call(kubesim, "GET", f"{CM}?limit=3").json
    token = first["metadata"]["continue"]
    # Changes after the first page must not show up in the following pages.
    call(kubesim, "DELETE", f"{CM}/cm-004")
    call(kubesim, "POST", CM, {"metadata": {"name": "cm-999"}})
    cm5 = call(kubesim, "GET", f"{CM}/cm-005").json
    cm5["data"] = {"changed": "yes"}
    call(kubesim, "PUT", f"{CM}/cm-005", cm5)
    rest = call(kubesim, "GET", f"{CM}?limit=3&continue={token}").json
    assert [i["metadata"]["name"] for i in rest["items"]] == ["cm-003", "cm-004", "cm-005"]
    assert "data" not in rest["items"][2]
    assert rest["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert "continue" not in rest["metadata"]


def test_expired_continue_is_410_with_an_inconsistent_token(kubesim):
    _seed_configmaps(kubesim, 4)
    token = call(kubesim, "GET", f"{CM}?limit=2").json["metadata"]["continue"]
    call(kubesim, "POST", CM, {"metadata": {"name": "later"}})
    kubesim.compact()
    reply = call(kubesim, "GET", f"{CM}?limit=2&continue={token}")
    assert reply.status == 410
    body = reply.json
    assert body["reason"] == "Expired"
    assert body["message"].startswith("The provided continue parameter is too old to display "
                                      "a consistent list result.")
    fresh = call(kubesim, "GET", f"{CM}?limit=2&continue={body['metadata']['continue']}").json
    assert [i["metadata"]["name"] for i in fresh["items"]] == ["cm-002", "cm-003"]
    garbage = call(kubesim, "GET", f"{CM}?continue=notatoken")
    assert garbage.status == 400


def test_resource_version_semantics(kubesim):
    _seed_configmaps(kubesim, 5)
    any_rv = call(kubesim, "GET", f"{CM}?resourceVersion=0&limit=2").json
    assert len(any_rv["items"]) == 5  # the watch cache ignores limit for resourceVersion=0
    assert "continue" not in any_rv["metadata"]
    rv = int(any_rv["metadata"]["resourceVersion"])
    call(kubesim, "DELETE", f"{CM}/cm-000")
    exact = call(kubesim, "GET", f"{CM}?resourceVersion={rv}&resourceVersionMatch=Exact").json
    assert len(exact["items"]) == 5
    assert exact["metadata"]["resourceVersion"] == str(rv)
    newer = call(kubesim, "GET", f"{CM}?resourceVersion={rv}").json
    assert len(newer["items"]) == 4
    kubesim.compact()
    gone = call(kubesim, "GET", f"{CM}?resourceVersion={rv}&resourceVersionMatch=Exact")
    assert gone.status == 410
    assert gone.json["message"].startswith("too old resource version")


def test_label_selectors(kubesim):
    _seed_configmaps(kubesim, 6)

    def names(selector: str) -> list[str]:
        reply = call(kubesim, "GET", f"{CM}?labelSelector={selector}")
        assert reply.status == 200, reply.raw
        return [i["metadata"]["name"] for i in reply.json["items"]]

    assert names("tier=a") == ["cm-001", "cm-003", "cm-005"]
    assert names("tier!=a") == ["cm-000", "cm-002", "cm-004"]
    assert names("tier==b,n in (0,4,5)") == ["cm-000", "cm-004"]
    assert names("n notin (0,1,2,3)") == ["cm-004", "cm-005"]
    assert names("tier") == [f"cm-{i:03d}" for i in range(6)]
    assert names("!tier") == []
    assert names("n>3") == ["cm-004", "cm-005"]
    assert call(kubesim, "GET", f"{CM}?labelSelector=a%20b%20c").status == 400


def _event(name: str, kind: str, obj: str, reason: str, type_: str = "Normal",
           source: str = "kubelet") -> dict:
    return {"metadata": {"name": name}, "reason": reason, "type": type_, "message": name,
            "source": {"component": source},
            "involvedObject": {"kind": kind, "name": obj, "namespace": "default"}}


def test_event_field_selectors(kubesim):
    for body in (_event("e1", "Pod", "web", "Started"),
                 _event("e2", "Pod", "db", "BackOff", "Warning"),
                 _event("e3", "Node", "n1", "Started", source="controller")):
        assert call(kubesim, "POST", EVENTS, body).status == 201

    def names(selector: str, path: str = EVENTS) -> list[str]:
        reply = call(kubesim, "GET", f"{path}?fieldSelector={selector}")
        assert reply.status == 200, reply.raw
        return [i["metadata"]["name"] for i in reply.json["items"]]

    assert names("involvedObject.kind=Pod") == ["e1", "e2"]
    assert names("involvedObject.kind=Pod,reason!=Started") == ["e2"]
    assert names("type=Warning") == ["e2"]
    assert names("source=controller") == ["e3"]
    assert names("involvedObject.name==web") == ["e1"]
    assert names("metadata.name!=e1,metadata.namespace=default") == ["e2", "e3"]
    assert names("regarding.kind=Node", "/apis/events.k8s.io/v1/namespaces/default/events") \
        == ["e3"]
    core = client.CoreV1Api(kubesim.api_client())
    typed = core.list_event_for_all_namespaces(field_selector="reason=BackOff")
    assert [e.metadata.name for e in typed.items] == ["e2"]


def test_unsupported_field_labels_are_400(kubesim):
    reply = call(kubesim, "GET", f"{CM}?fieldSelector=data.a=1")
    assert reply.status == 400
    assert reply.json["message"] == "field label not supported: data.a"
    assert call(kubesim, "GET", "/api/v1/secrets?fieldSelector=type=Opaque").status == 200
    assert call(kubesim, "GET", "/api/v1/namespaces?fieldSelector=status.phase=Active"
                ).status == 200


def test_selectors_combine_with_limit(kubesim):
    _seed_configmaps(kubesim, 10)
    page = call(kubesim, "GET", f"{CM}?labelSelector=tier=a&limit=2").json
    assert [i["metadata"]["name"] for i in page["items"]] == ["cm-001", "cm-003"]
    assert "remainingItemCount" not in page["metadata"]
    token = page["metadata"]["continue"]
    rest = call(kubesim, "GET", f"{CM}?labelSelector=tier=a&limit=10&continue={token}").json
    assert [i["metadata"]["name"] for i in rest["items"]] == ["cm-005", "cm-007", "cm-009"]


def test_list_across_namespaces_sorts_like_etcd_keys(kubesim):
    for ns in ("a", "a-b"):
        call(kubesim, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        call(kubesim, "POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "x"}})
    items = call(kubesim, "GET", "/api/v1/configmaps").json["items"]
    # "a-b/x" < "a/x" byte-wise, as /registry/configmaps/<ns>/<name> keys sort in etcd
    assert [i["metadata"]["namespace"] for i in items] == ["a-b", "a"]


@pytest.mark.parametrize(("path", "columns"), [
    (CM, ["Name", "Data", "Age"]),
    ("/api/v1/namespaces", ["Name", "Status", "Age"]),
    (EVENTS, ["Last Seen", "Type", "Reason", "Object", "Subobject", "Source", "Message",
              "First Seen", "Count", "Name"]),
    ("/api/v1/componentstatuses", ["Name", "Status", "Message", "Error"]),
])
def test_tables_for_kubectl_get(kubesim, path, columns):
    call(kubesim, "POST", CM, {"metadata": {"name": "t"}, "data": {"a": "1", "b": "2"}})
    call(kubesim, "POST", EVENTS, _event("ev", "Pod", "web", "Started"))
    accept = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;"
              "g=meta.k8s.io,application/json")
    reply = call(kubesim, "GET", f"{path}?limit=500", accept=accept).json
    assert reply["kind"] == "Table"
    assert reply["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in reply["columnDefinitions"]] == columns
    assert reply["rows"]
    if path == CM:
        assert reply["rows"][0]["cells"][:2] == ["t", 2]
        assert reply["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    if path == EVENTS:
        assert reply["rows"][0]["cells"][1:4] == ["Normal", "Started", "pod/web"]


def test_resource_version_ahead_of_the_server_times_out_with_504(kubesim):
    ahead = kubesim.store.rv + 100
    reply = call(kubesim, "GET", f"{CM}?resourceVersion={ahead}")
    assert reply.status == 504
    assert reply.json["reason"] == "Timeout"
    assert reply.json["message"] == (f"Too large resource version: {ahead}, current: "
                                     f"{kubesim.store.rv}")
    assert reply.json["details"]["causes"] == [{"reason": "ResourceVersionTooLarge",
                                                "message": "Too large resource version"}]
    assert call(kubesim, "GET", f"{CM}?resourceVersion=abc").status == 400
