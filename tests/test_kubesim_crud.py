"""kubesim conformance, official client: create/get/list/update/patch/delete on every
served resource, and the real server's Status bodies for each failure."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from kubernetes import client
from kubesim_http import call

EVENT_TIME = "2024-05-01T10:00:00.000000Z"
RBAC = "rbac.authorization.k8s.io"

# plural-or-qualified -> (collection path, sample body, field to change on update)
SAMPLES: dict[str, tuple[str, dict[str, Any], tuple[str, Any]]] = {
    "namespaces": ("/api/v1/namespaces", {"metadata": {"name": "team-a"}},
                   ("metadata.labels", {"x": "y"})),
    "configmaps": ("/api/v1/namespaces/default/configmaps",
                   {"metadata": {"name": "cm1"}, "data": {"a": "1"}}, ("data", {"a": "2"})),
    "endpoints": ("/api/v1/namespaces/default/endpoints",
                  {"metadata": {"name": "ep1"}, "subsets": [
                      {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]},
                  ("subsets", [])),
    "events": ("/api/v1/namespaces/default/events",
               {"metadata": {"name": "ev1"}, "reason": "Started", "message": "hello",
                "type": "Normal", "count": 1,
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}},
               ("count", 2)),
    "serviceaccounts": ("/api/v1/namespaces/default/serviceaccounts",
                        {"metadata": {"name": "sa1"}}, ("automountServiceAccountToken", False)),
    "secrets": ("/api/v1/namespaces/default/secrets",
                {"metadata": {"name": "s1"}, "data": {"k": base64.b64encode(b"v").decode()}},
                ("data", {"k": base64.b64encode(b"w").decode()})),
    "leases.coordination.k8s.io": (
        "/apis/coordination.k8s.io/v1/namespaces/default/leases",
        {"metadata": {"name": "l1"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}},
        ("spec", {"holderIdentity": "b", "leaseDurationSeconds": 15})),
    "events.events.k8s.io": (
        "/apis/events.k8s.io/v1/namespaces/default/events",
        {"metadata": {"name": "ev2"}, "eventTime": EVENT_TIME, "reportingController": "ctl",
         "reportingInstance": "ctl-1", "action": "Start", "reason": "Started", "note": "n",
         "type": "Normal", "regarding": {"kind": "Pod", "name": "p", "namespace": "default"}},
        ("note", "changed")),
    "roles.rbac.authorization.k8s.io": (
        f"/apis/{RBAC}/v1/namespaces/default/roles",
        {"metadata": {"name": "r1"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
        ("rules", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}])),
    "rolebindings.rbac.authorization.k8s.io": (
        f"/apis/{RBAC}/v1/namespaces/default/rolebindings",
        {"metadata": {"name": "rb1"}, "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "r1"},
         "subjects": [{"kind": "ServiceAccount", "name": "sa1", "namespace": "default"}]},
        ("subjects", [])),
    "clusterroles.rbac.authorization.k8s.io": (
        f"/apis/{RBAC}/v1/clusterroles",
        {"metadata": {"name": "cr1"}, "rules": [{"nonResourceURLs": ["/x"], "verbs": ["get"]}]},
        ("rules", [])),
    "clusterrolebindings.rbac.authorization.k8s.io": (
        f"/apis/{RBAC}/v1/clusterrolebindings",
        {"metadata": {"name": "crb1"},
         "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cr1"},
         "subjects": [{"kind": "Group", "apiGroup": RBAC, "name": "devs"}]},
        ("subjects", [])),
}


def _resource_and_group(qualified: str) -> tuple[str, str]:
    plural, _, group = qualified.partition(".")
    return plural, group


@pytest.mark.parametrize("qualified", list(SAMPLES))
def test_crud_cycle_on_every_resource(kubesim, qualified):
    path, sample, (field, new_value) = SAMPLES[qualified]
    plural, group = _resource_and_group(qualified)
    name = sample["metadata"]["name"]
    created = call(kubesim, "POST", path, sample)
    assert created.status == 201, created.raw
    obj = created.json
    meta = obj["metadata"]
    assert meta["name"] == name
    assert meta["uid"]
    assert meta["creationTimestamp"].endswith("Z")
    rv1 = int(meta["resourceVersion"])

    got = call(kubesim, "GET", f"{path}/{name}")
    assert got.status == 200
    assert got.json == obj

    listed = call(kubesim, "GET", path).json
    assert listed["kind"] == obj["kind"] + "List"
    assert name in [i["metadata"]["name"] for i in listed["items"]]
    assert int(listed["metadata"]["resourceVersion"]) >= rv1

    if field.startswith("metadata."):
        obj["metadata"][field.split(".", 1)[1]] = new_value
    else:
        obj[field] = new_value
    updated = call(kubesim, "PUT", f"{path}/{name}", obj)
    assert updated.status == 200, updated.raw
    rv2 = int(updated.json["metadata"]["resourceVersion"])
    assert rv2 > rv1

    stale = call(kubesim, "PUT", f"{path}/{name}", obj)  # still carries rv1
    assert stale.status == 409
    qualified_name = f"{plural}.{group}" if group else plural
    assert stale.json == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'Operation cannot be fulfilled on {qualified_name} "{name}": the object '
                   "has been modified; please apply your changes to the latest version and "
                   "try again",
        "reason": "Conflict",
        "details": {"name": name, **({"group": group} if group else {}), "kind": plural},
        "code": 409,
    }

    patched = call(kubesim, "PATCH", f"{path}/{name}",
                   {"metadata": {"annotations": {"patched": "merge"}}},
                   content_type="application/merge-patch+json")
    assert patched.status == 200, patched.raw
    assert patched.json["metadata"]["annotations"]["patched"] == "merge"
    strategic = call(kubesim, "PATCH", f"{path}/{name}",
                     {"metadata": {"labels": {"patched": "strategic"}}},
                     content_type="application/strategic-merge-patch+json")
    assert strategic.status == 200, strategic.raw
    assert strategic.json["metadata"]["annotations"]["patched"] == "merge"
    assert strategic.json["metadata"]["labels"]["patched"] == "strategic"
    assert int(strategic.json["metadata"]["resourceVersion"]) > rv2

    deleted = call(kubesim, "DELETE", f"{path}/{name}")
    assert deleted.status == 200, deleted.raw
    if plural == "namespaces":
        assert deleted.json["status"]["phase"] == "Terminating"
    else:
        details = {"name": name, **({"group": group} if group else {}), "kind": plural,
                   "uid": meta["uid"]}
        assert deleted.json == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Success", "details": details}
    missing = call(kubesim, "GET", f"{path}/{name}")
    deadline = time.monotonic() + 5
    while missing.status == 200 and plural == "namespaces":  # Terminating for a moment
        assert time.monotonic() < deadline
        time.sleep(0.05)
        missing = call(kubesim, "GET", f"{path}/{name}")
    assert missing.status == 404
    assert missing.json["message"] == f'{qualified_name} "{name}" not found'
    assert missing.json["reason"] == "NotFound"
    assert missing.json["details"] == {"name": name, **({"group": group} if group else {}),
                                       "kind": plural}


def test_typed_clients_round_trip(kubesim):
    core = client.CoreV1Api(kubesim.api_client())
    coord = client.CoordinationV1Api(kubesim.api_client())
    rbac = client.RbacAuthorizationV1Api(kubesim.api_client())
    cm = core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="typed"), data={"a": "b"}))
    assert isinstance(cm, client.V1ConfigMap)
    cm.data["a"] = "c"
    assert core.replace_namespaced_config_map("typed", "default", cm).data == {"a": "c"}
    lease = coord.create_namespaced_lease("default", client.V1Lease(
        metadata=client.V1ObjectMeta(name="lock"),
        spec=client.V1LeaseSpec(holder_identity="me", lease_duration_seconds=15)))
    assert lease.spec.holder_identity == "me"
    role = rbac.create_namespaced_role("default", client.V1Role(
        metadata=client.V1ObjectMeta(name="reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["events"], verbs=["list"])]))
    assert role.rules[0].resources == ["events"]


def test_resource_versions_increase_globally_across_kinds(kubesim):
    seen = []
    for qualified in ("configmaps", "secrets", "leases.coordination.k8s.io", "configmaps"):
        path, sample, _ = SAMPLES[qualified]
        body = {**sample, "metadata": {"generateName": "x-"}}
        seen.append(int(call(kubesim, "POST", path, body).json["metadata"]["resourceVersion"]))
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


def test_create_twice_is_already_exists(kubesim):
    path, sample, _ = SAMPLES["leases.coordination.k8s.io"]
    assert call(kubesim, "POST", path, sample).status == 201
    again = call(kubesim, "POST", path, sample)
    assert again.status == 409
    assert again.json["reason"] == "AlreadyExists"
    assert again.json["message"] == 'leases.coordination.k8s.io "l1" already exists'
    assert again.json["details"] == {"name": "l1", "group": "coordination.k8s.io",
                                     "kind": "leases"}


def test_invalid_names_are_422_with_causes(kubesim):
    bad = call(kubesim, "POST", "/api/v1/namespaces/default/configmaps",
               {"metadata": {"name": "Bad_Name"}})
    assert bad.status == 422
    body = bad.json
    assert body["reason"] == "Invalid"
    assert body["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase '
        "RFC 1123 subdomain must consist of lower case alphanumeric characters")
    assert body["details"]["kind"] == "ConfigMap"
    assert body["details"]["causes"][0]["reason"] == "FieldValueInvalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    unnamed = call(kubesim, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {}})
    assert unnamed.json["message"] == ('ConfigMap "" is invalid: metadata.name: Required value: '
                                       "name or generateName is required")
    ns = call(kubesim, "POST", "/api/v1/namespaces", {"metadata": {"name": "has.dot"}})
    assert ns.status == 422
    assert "RFC 1123 label" in ns.json["message"]
    lease = call(kubesim, "POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases",
                 {"metadata": {"name": "x"}, "spec": {"leaseDurationSeconds": 0}})
    assert lease.json["message"] == ('Lease.coordination.k8s.io "x" is invalid: '
                                     "spec.leaseDurationSeconds: Invalid value: 0: must be "
                                     "greater than 0")


def test_generate_name(kubesim):
    made = call(kubesim, "POST", "/api/v1/namespaces/default/configmaps",
                {"metadata": {"generateName": "gen-"}}).json
    assert made["metadata"]["name"].startswith("gen-")
    assert len(made["metadata"]["name"]) == len("gen-") + 5


def test_create_in_missing_namespace_is_404(kubesim):
    reply = call(kubesim, "POST", "/api/v1/namespaces/nope/configmaps", {"metadata": {"name": "a"}})
    assert reply.status == 404
    assert reply.json["message"] == 'namespaces "nope" not found'
    assert reply.json["details"] == {"name": "nope", "kind": "namespaces"}


def test_namespace_in_body_must_match_url(kubesim):
    reply = call(kubesim, "POST", "/api/v1/namespaces/default/configmaps",
                 {"metadata": {"name": "a", "namespace": "kube-system"}})
    assert reply.status == 400
    assert reply.json["message"] == ("the namespace of the provided object does not match the "
                                      "namespace sent on the request")


def test_put_without_resource_version_is_unconditional_except_leases(kubesim):
    path = "/api/v1/namespaces/default/configmaps"
    call(kubesim, "POST", path, {"metadata": {"name": "u"}, "data": {"a": "1"}})
    blind = call(kubesim, "PUT", f"{path}/u", {"metadata": {"name": "u"}, "data": {"a": "2"}})
    assert blind.status == 200
    assert blind.json["data"] == {"a": "2"}
    lpath, sample, _ = SAMPLES["leases.coordination.k8s.io"]
    call(kubesim, "POST", lpath, sample)
    lease = call(kubesim, "PUT", f"{lpath}/l1", sample)
    assert lease.status == 422
    assert lease.json["message"] == ('leases.coordination.k8s.io "l1" is invalid: '
                                     "metadata.resourceVersion: Invalid value: 0x0: must be "
                                     "specified for an update")


@pytest.mark.parametrize(("qualified", "creates"), [
    ("configmaps", False), ("secrets", False), ("serviceaccounts", False),
    ("leases.coordination.k8s.io", True), ("events", True), ("endpoints", True),
    ("roles.rbac.authorization.k8s.io", True),
])
def test_put_to_missing_object_creates_only_where_the_real_server_does(kubesim, qualified,
                                                                       creates):
    path, sample, _ = SAMPLES[qualified]
    reply = call(kubesim, "PUT", f"{path}/{sample['metadata']['name']}", sample)
    assert reply.status == (201 if creates else 404), reply.raw


def test_noop_update_keeps_resource_version_and_sends_no_event(kubesim):
    path = "/api/v1/namespaces/default/configmaps"
    obj = call(kubesim, "POST", path, {"metadata": {"name": "same"}, "data": {"a": "1"}}).json
    before = kubesim.store.rv
    again = call(kubesim, "PUT", f"{path}/same", obj).json
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert kubesim.store.rv == before


def test_uid_mismatch_on_update_is_a_precondition_conflict(kubesim):
    path = "/api/v1/namespaces/default/configmaps"
    obj = call(kubesim, "POST", path, {"metadata": {"name": "u"}}).json
    obj["metadata"]["uid"] = "other"
    reply = call(kubesim, "PUT", f"{path}/u", obj)
    assert reply.status == 409
    assert "Precondition failed: UID in precondition: other" in reply.json["message"]


def test_unknown_fields_strict_is_400_and_default_warns(kubesim):
    path = "/api/v1/namespaces/default/configmaps"
    strict = call(kubesim, "POST", f"{path}?fieldValidation=Strict",
                  {"metadata": {"name": "a"}, "dta": {}})
    assert strict.status == 400
    assert strict.json["message"] == 'strict decoding error: unknown field "dta"'
    warned = call(kubesim, "POST", path, {"metadata": {"name": "a"}, "dta": {}})
    assert warned.status == 201
    assert "dta" not in warned.json
    assert warned.headers["warning"] == '299 - "unknown field \\"dta\\""'


def test_events_share_one_store_across_both_apis(kubesim):
    core_path, core_sample, _ = SAMPLES["events"]
    v1_path, v1_sample, _ = SAMPLES["events.events.k8s.io"]
    call(kubesim, "POST", core_path, core_sample)
    call(kubesim, "POST", v1_path, v1_sample)
    as_v1 = call(kubesim, "GET", f"{v1_path}/ev1").json
    assert as_v1["apiVersion"] == "events.k8s.io/v1"
    assert as_v1["note"] == "hello"
    assert as_v1["regarding"]["name"] == "p"
    assert as_v1["deprecatedCount"] == 1
    as_core = call(kubesim, "GET", f"{core_path}/ev2").json
    assert as_core["apiVersion"] == "v1"
    assert as_core["message"] == "n"
    assert as_core["involvedObject"]["kind"] == "Pod"
    assert as_core["reportingComponent"] == "ctl"
    assert as_core["eventTime"] == EVENT_TIME
    names = sorted(i["metadata"]["name"] for i in call(kubesim, "GET", v1_path).json["items"])
    assert names == ["ev1", "ev2"]
    events_v1 = client.EventsV1Api(kubesim.api_client())
    assert events_v1.read_namespaced_event("ev2", "default").note == "n"


def test_quirk_events_v1_model_rejects_core_events_without_event_time(kubesim):
    """An Event written through core/v1 without eventTime reads back through events.k8s.io/v1
    with ``"eventTime": null`` (as from a real server); the official client's EventsV1Event
    model refuses that (kubernetes-client/python#1616). Raw JSON is the way around it."""
    core_path, core_sample, _ = SAMPLES["events"]
    call(kubesim, "POST", core_path, core_sample)
    raw = call(kubesim, "GET", "/apis/events.k8s.io/v1/namespaces/default/events/ev1").json
    assert raw["eventTime"] is None
    with pytest.raises(ValueError, match="eventTime"):
        client.EventsV1Api(kubesim.api_client()).read_namespaced_event("ev1", "default")


def test_event_namespace_must_match_involved_object(kubesim):
    reply = call(kubesim, "POST", "/api/v1/namespaces/default/events",
                 {"metadata": {"name": "e"},
                  "involvedObject": {"kind": "Pod", "name": "p", "namespace": "other"}})
    assert reply.status == 422
    assert "involvedObject.namespace: Invalid value: \"other\": does not match event.namespace" \
        in reply.json["message"]


def test_secret_string_data_is_merged_into_data(kubesim):
    made = call(kubesim, "POST", "/api/v1/namespaces/default/secrets",
                {"metadata": {"name": "s"}, "stringData": {"token": "abc"}}).json
    assert "stringData" not in made
    assert made["type"] == "Opaque"
    assert base64.b64decode(made["data"]["token"]) == b"abc"


def test_patches_json_strategic_and_merge(kubesim):
    path = "/api/v1/namespaces/default/serviceaccounts"
    call(kubesim, "POST", path, {"metadata": {
        "name": "sa", "finalizers": ["a"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "1"}]},
        "secrets": [{"name": "one"}]})
    smp = call(kubesim, "PATCH", f"{path}/sa", {
        "metadata": {"finalizers": ["b"],
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Y", "name": "p",
                                          "uid": "2"}]},
        "secrets": [{"name": "two"}]}, content_type="application/strategic-merge-patch+json")
    meta = smp.json["metadata"]
    assert meta["finalizers"] == ["a", "b"]
    assert [o["uid"] for o in meta["ownerReferences"]] == ["1", "2"]
    assert smp.json["secrets"] == [{"name": "one"}, {"name": "two"}]
    merge = call(kubesim, "PATCH", f"{path}/sa", {"secrets": [{"name": "three"}]},
                 content_type="application/merge-patch+json")
    assert merge.json["secrets"] == [{"name": "three"}]
    jp = call(kubesim, "PATCH", f"{path}/sa",
              [{"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}],
              content_type="application/json-patch+json")
    assert jp.json["metadata"]["labels"] == {"k": "v"}
    failed = call(kubesim, "PATCH", f"{path}/sa",
                  [{"op": "test", "path": "/metadata/name", "value": "other"}],
                  content_type="application/json-patch+json")
    assert failed.status == 422
    stale = call(kubesim, "PATCH", f"{path}/sa", {"metadata": {"resourceVersion": "1"}},
                 content_type="application/merge-patch+json")
    assert stale.status == 409
    unsupported = call(kubesim, "PATCH", f"{path}/sa", {}, content_type="application/xml")
    assert unsupported.status == 415
    assert unsupported.json["reason"] == "UnsupportedMediaType"
    missing = call(kubesim, "PATCH", f"{path}/nope", {},
                   content_type="application/merge-patch+json")
    assert missing.status == 404


def test_delete_preconditions_and_collection(kubesim):
    path = "/api/v1/namespaces/default/configmaps"
    for i in range(3):
        call(kubesim, "POST", path, {"metadata": {"name": f"c{i}", "labels": {"i": str(i)}}})
    pre = call(kubesim, "DELETE", f"{path}/c0", {"preconditions": {"uid": "nope"}})
    assert pre.status == 409
    assert "Precondition failed: UID in precondition: nope" in pre.json["message"]
    gone = call(kubesim, "DELETE", f"{path}?labelSelector=i!=1")
    assert gone.status == 200
    assert sorted(i["metadata"]["name"] for i in gone.json["items"]) == ["c0", "c2"]
    left = [i["metadata"]["name"] for i in call(kubesim, "GET", path).json["items"]]
    assert left == ["c1"]


def test_namespace_delete_removes_content_and_protected_ones_refuse(kubesim):
    call(kubesim, "POST", "/api/v1/namespaces", {"metadata": {"name": "tmp"}})
    call(kubesim, "POST", "/api/v1/namespaces/tmp/configmaps", {"metadata": {"name": "a"}})
    assert call(kubesim, "GET", "/api/v1/namespaces/tmp/serviceaccounts/default").status == 200
    deleting = call(kubesim, "DELETE", "/api/v1/namespaces/tmp")
    assert deleting.status == 200
    assert deleting.json["status"]["phase"] == "Terminating"
    assert deleting.json["metadata"]["deletionTimestamp"]
    late = call(kubesim, "POST", "/api/v1/namespaces/tmp/configmaps", {"metadata": {"name": "b"}})
    assert late.status == 403
    assert late.json["message"] == ('configmaps "b" is forbidden: unable to create new content '
                                    "in namespace tmp because it is being terminated")
    deadline = time.monotonic() + 5
    while call(kubesim, "GET", "/api/v1/namespaces/tmp").status != 404:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert call(kubesim, "GET", "/api/v1/namespaces/tmp/configmaps/a").status == 404
    refused = call(kubesim, "DELETE", "/api/v1/namespaces/default")
    assert refused.status == 403
    assert refused.json["message"] == ('namespaces "default" is forbidden: this namespace may '
                                       "not be deleted")


def test_token_request_subresource(kubesim):
    core = client.CoreV1Api(kubesim.api_client())
    core.create_namespaced_service_account("default", {"metadata": {"name": "robot"}})
    answer = core.create_namespaced_service_account_token(
        "robot", "default", {"spec": {"expirationSeconds": 3600}})
    token = answer.status.token
    who = call(kubesim, "GET", "/api/v1/namespaces/default/configmaps", token=token)
    assert who.status in (200, 403)
    counts = kubesim.counts()["clients"]
    assert "system:serviceaccount:default:robot" in [c["user"] for c in counts]


def test_componentstatuses_are_read_only(kubesim):
    listed = call(kubesim, "GET", "/api/v1/componentstatuses")
    assert listed.json["kind"] == "ComponentStatusList"
    assert {i["metadata"]["name"] for i in listed.json["items"]} == {
        "controller-manager", "etcd-0", "scheduler"}
    assert "deprecated" in listed.headers["warning"]
    one = call(kubesim, "GET", "/api/v1/componentstatuses/scheduler").json
    assert one["conditions"] == [{"type": "Healthy", "status": "True", "message": "ok"}]
    refused = call(kubesim, "POST", "/api/v1/componentstatuses", {"metadata": {"name": "x"}})
    assert refused.status == 405
    assert refused.json["reason"] == "MethodNotAllowed"
    typed = client.CoreV1Api(kubesim.api_client()).list_component_status()
    assert len(typed.items) == 3


def test_unknown_paths_are_404_status(kubesim):
    for path in ("/api/v1/pods", "/apis/apps/v1/deployments", "/nothing"):
        reply = call(kubesim, "GET", path)
        assert reply.status == 404
        assert reply.json["message"] == "the server could not find the requested resource"


def test_bad_bodies(kubesim):
    path = "/api/v1/namespaces/default/configmaps"
    broken = call(kubesim, "POST", path, "{not json")
    assert broken.status == 400
    wrong_kind = call(kubesim, "POST", path, {"kind": "Secret", "apiVersion": "v1",
                                              "metadata": {"name": "a"}})
    assert wrong_kind.status == 400
    yaml_body = call(kubesim, "POST", path, "metadata: {name: from-yaml}\n",
                     content_type="application/yaml")
    assert yaml_body.status == 201
    odd = call(kubesim, "POST", path, "x", content_type="text/plain")
    assert odd.status == 415
    only_protobuf = call(kubesim, "GET", path, accept="application/vnd.kubernetes.protobuf")
    assert only_protobuf.status == 406


def test_discovery_documents(kubesim):
    api = call(kubesim, "GET", "/api").json
    assert api["kind"] == "APIVersions"
    assert api["versions"] == ["v1"]
    groups = {g["name"] for g in call(kubesim, "GET", "/apis").json["groups"]}
    assert groups == {"coordination.k8s.io", "events.k8s.io", RBAC}
    core = call(kubesim, "GET", "/api/v1").json
    names = {r["name"] for r in core["resources"]}
    assert {"namespaces", "configmaps", "endpoints", "events", "serviceaccounts", "secrets",
            "componentstatuses", "serviceaccounts/token"} <= names
    agg = call(kubesim, "GET", "/apis", accept="application/json;g=apidiscovery.k8s.io;v=v2;"
               "as=APIGroupDiscoveryList,application/json")
    assert agg.headers["content-type"].startswith("application/json;g=apidiscovery.k8s.io;v=v2")
    assert agg.json["kind"] == "APIGroupDiscoveryList"
    version = call(kubesim, "GET", "/version").json
    assert (version["major"], version["minor"]) == ("1", "32")
    assert call(kubesim, "GET", "/openapi/v2").status == 404
    v3 = call(kubesim, "GET", "/openapi/v3").json
    assert "api/v1" in v3["paths"]


def test_timestamps_are_reencoded_like_the_real_server(kubesim):
    event = call(kubesim, "POST", "/api/v1/namespaces/default/events", {
        "metadata": {"name": "t"}, "firstTimestamp": "2024-05-01T12:00:00.123+02:00",
        "eventTime": "2024-05-01T10:00:00.5Z", "reportingComponent": "c",
        "reportingInstance": "c-1", "action": "Do", "reason": "Done",
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}}).json
    assert event["firstTimestamp"] == "2024-05-01T10:00:00Z"  # Time: whole seconds, UTC
    assert event["eventTime"] == "2024-05-01T10:00:00.500000Z"  # MicroTime
    assert event["lastTimestamp"] is None
    bad = call(kubesim, "POST", "/api/v1/namespaces/default/events",
               {"metadata": {"name": "u"}, "lastTimestamp": "yesterday"})
    assert bad.status == 400
