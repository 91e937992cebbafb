"""kubesim.protobuf: kubectl's protobuf request bodies decode to the dicts their JSON gives.

Evidence, strongest first:
- ``data/kubectl_protobuf/<name>.bin``: the bodies kubectl v1.32.4 sent for the commands in
  ``VECTORS`` (captured by a throwaway HTTP server); ``<name>.json``: kubectl's own
  ``--dry-run=client -o json`` of the same command, i.e. Go's JSON of the same object.
- live kubectl (marker ``kubectl``): the bodies the kubectl on PATH sends now (read from its
  ``-v=10`` hex dump), and the message descriptors compiled into that binary, compared with
  kubesim's schema table field by field.
- round trips of a fully populated object of every kind, and Go's JSON conventions.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from kubesim.protobuf import KINDS, MAGIC, ProtobufError, decode, message_class

DATA = Path(__file__).parent / "data" / "kubectl_protobuf"

# name -> kubectl arguments that produced data/kubectl_protobuf/<name>.bin ({blob}: a file
# holding b"\x00\xff\xfe\x01k8s"). The comment marks commands kubectl runs without discovery.
VECTORS = {
    "configmap_datadogtoken": "create configmap datadogtoken --from-literal=event.tokenKey=0",
    "configmap_binary_saveconfig": "create configmap blob --from-literal=a=1"
    " --from-file=bin={blob} --save-config -n kube-system",
    "namespace": "create namespace kube-event-agent",
    "secret_generic": "create secret generic dd-api-key --from-literal=api-key=not-a-real-key"
    " --type=Opaque",
    "secret_docker_registry": "create secret docker-registry regcred --docker-server=r.example"
    " --docker-username=u --docker-password=p",
    "serviceaccount": "create serviceaccount kube-event-agent",
    "token_bound": "create token kube-event-agent --duration=10m --audience=api --audience=intake"
    " --bound-object-kind=Secret --bound-object-name=dd-api-key",
    "token_plain": "create token kube-event-agent",
    "role_configmap": "create role datadogtoken-writer --verb=get,update --resource=configmaps"
    " --resource-name=datadogtoken",
    "role_groups": "create role lease-reader --verb=get,list,watch"
    " --resource=leases.coordination.k8s.io,events.events.k8s.io,events",
    "rolebinding": "create rolebinding datadogtoken-writer --role=datadogtoken-writer"
    " --serviceaccount=default:kube-event-agent --user=alice --group=devs",
    "clusterrole_nonresource": "create clusterrole readyz-reader --verb=get"
    " --resource=componentstatuses --non-resource-url=/readyz --non-resource-url=/livez",
    "clusterrole_aggregation": "create clusterrole monitoring"
    " --aggregation-rule=rbac.example.com/aggregate-to-monitoring=true",
    "clusterrolebinding": "create clusterrolebinding readyz-reader --clusterrole=readyz-reader"
    " --serviceaccount=default:kube-event-agent",
    "ssar_resource": "auth can-i list events -n default",
    "ssar_subresource": "auth can-i get configmaps/datadogtoken -n kube-system"
    " --subresource=status",
    "ssar_nonresource": "auth can-i get /readyz",
    "ssrr": "auth can-i --list -n default",
    "selfsubjectreview": "auth whoami",
}
NEEDS_DISCOVERY = {"role_configmap", "role_groups", "clusterrole_nonresource",
                   "clusterrole_aggregation", "ssar_resource", "ssar_subresource"}  # fmt: skip

_SSAR = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
         "metadata": {}, "status": {"allowed": False}}  # fmt: skip
_TOKEN = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {},
          "status": {"token": ""}}  # fmt: skip
# Commands without a --dry-run form: what Go's JSON of the object gives, nulls left out
# (kubectl sends every non-pointer field, so ``token: ""`` and ``allowed: false`` are there).
EXPECTED = {
    "token_bound": _TOKEN | {"spec": {
        "audiences": ["api", "intake"], "expirationSeconds": 600,
        "boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "dd-api-key"}}},
    "token_plain": _TOKEN | {"spec": {}},
    "ssar_resource": _SSAR | {"spec": {"resourceAttributes": {
        "namespace": "default", "verb": "list", "resource": "events"}}},
    "ssar_subresource": _SSAR | {"spec": {"resourceAttributes": {
        "namespace": "kube-system", "verb": "get", "resource": "configmaps",
        "subresource": "status", "name": "datadogtoken"}}},
    "ssar_nonresource": _SSAR | {"spec": {"nonResourceAttributes": {
        "path": "/readyz", "verb": "get"}}},
    "ssrr": {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
             "metadata": {}, "spec": {"namespace": "default"}, "status": {"incomplete": False}},
    "selfsubjectreview": {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                          "metadata": {}, "status": {"userInfo": {}}},
}  # fmt: skip


def drop_nulls(value: Any) -> Any:
    """Go's JSON has ``null`` for a zero Time; decode leaves such fields out."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def expected(name: str) -> dict[str, Any]:
    if name in EXPECTED:
        return EXPECTED[name]
    return drop_nulls(json.loads((DATA / f"{name}.json").read_text()))


# --- real kubectl bodies ------------------------------------------------------------------


def test_every_vector_has_an_expectation():
    names = {p.stem for p in DATA.glob("*.bin")}
    assert names == set(VECTORS)
    assert {p.stem for p in DATA.glob("*.json")} == names - set(EXPECTED)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_kubectl_1_32_body_decodes_to_its_json(name):
    body = (DATA / f"{name}.bin").read_bytes()
    assert body.startswith(MAGIC)
    assert decode(body) == expected(name)


def test_datadogtoken_configmap_from_the_seed_command():
    obj = decode((DATA / "configmap_datadogtoken.bin").read_bytes())
    assert obj == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "datadogtoken"},
        "data": {"event.tokenKey": "0"},
    }


def test_binary_data_and_secret_data_are_standard_base64():
    cm = decode((DATA / "configmap_binary_saveconfig.bin").read_bytes())
    assert base64.b64decode(cm["binaryData"]["bin"]) == b"\x00\xff\xfe\x01k8s"
    assert "kubectl.kubernetes.io/last-applied-configuration" in cm["metadata"]["annotations"]
    secret = decode((DATA / "secret_generic.bin").read_bytes())
    assert base64.b64decode(secret["data"]["api-key"]) == b"not-a-real-key"


# --- round trips of every kind ------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1)


def _fill(message: Message, data: dict[str, Any]) -> None:
    """JSON form -> message, setting every given field explicitly (as gogo-protobuf does)."""
    message.SetInParent()
    for name, value in data.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        entry = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
        if entry is not None and entry.GetOptions().map_entry:
            value_type = entry.fields_by_name["value"].type
            for key, item in value.items():
                if value_type == FieldDescriptor.TYPE_MESSAGE:  # ExtraValue
                    target[key].items.extend(item)
                else:
                    bytes_value = value_type == FieldDescriptor.TYPE_BYTES
                    target[key] = base64.b64decode(item) if bytes_value else item
        elif isinstance(value, list) and entry is not None:
            for item in value:
                _fill_one(target.add(), item)
        elif isinstance(value, list):
            target.extend(value)
        elif entry is not None:
            _fill_one(target, value)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            setattr(message, name, base64.b64decode(value))
        else:
            setattr(message, name, value)


def _fill_one(message: Message, value: Any) -> None:
    name = message.DESCRIPTOR.name
    if name in ("Time", "MicroTime"):
        delta = datetime.fromisoformat(value.removesuffix("Z")) - _EPOCH
        message.seconds = delta.days * 86400 + delta.seconds
        message.nanos = delta.microseconds * 1000
    elif name == "FieldsV1":
        message.Raw = orjson.dumps(value)
    else:
        _fill(message, value)


def encode(obj: dict[str, Any]) -> bytes:
    """A dict in JSON form -> a kubectl-style body (magic + runtime.Unknown envelope)."""
    message = message_class(KINDS[obj["apiVersion"], obj["kind"]])()
    _fill(message, {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")})
    envelope = message_class("runtime.Unknown")(raw=message.SerializeToString())
    envelope.typeMeta.apiVersion, envelope.typeMeta.kind = obj["apiVersion"], obj["kind"]
    return MAGIC + envelope.SerializeToString()


T1, T2 = "2025-11-25T09:00:00Z", "2025-11-25T09:00:05Z"
MT1, MT2 = "2025-11-25T09:00:00.123456Z", "2025-11-25T09:01:00.000001Z"
REF = {"kind": "Pod", "namespace": "default", "name": "web-1", "uid": "6f1c", "apiVersion": "v1",
       "resourceVersion": "41", "fieldPath": "spec.containers{web}"}  # fmt: skip
META = {
    "name": "obj", "generateName": "obj-", "namespace": "default", "selfLink": "/x",
    "uid": "0b7c3c1e-5d6f-4a1b-9a43-1b2f6c1d2e3f", "resourceVersion": "42", "generation": 3,
    "creationTimestamp": T1, "deletionTimestamp": T2, "deletionGracePeriodSeconds": 0,
    "labels": {"app": "kube-event-agent"}, "annotations": {"a": "", "b": "2"},
    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "agent",
                         "uid": "u1", "controller": False, "blockOwnerDeletion": True}],
    "finalizers": ["kubernetes"],
    "managedFields": [{"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
                       "time": T1, "fieldsType": "FieldsV1",
                       "fieldsV1": {"f:data": {".": {}, "f:event.tokenKey": {}}}}],
}  # fmt: skip
SELECTOR = {"matchLabels": {"tier": "x"},
            "matchExpressions": [{"key": "k", "operator": "In", "values": ["a", "b"]},
                                 {"key": "e", "operator": "Exists"}]}  # fmt: skip
RULES = [{"verbs": ["get", "update"], "apiGroups": [""], "resources": ["configmaps"],
          "resourceNames": ["datadogtoken"]},
         {"verbs": ["get"], "nonResourceURLs": ["/readyz"]}]  # fmt: skip
SUBJECTS = [{"kind": "ServiceAccount", "name": "agent", "namespace": "default"},
            {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]  # fmt: skip
ROLE_REF = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}
LEADER = '{"holderIdentity":"pod-1","leaseDurationSeconds":60}'

FULL = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": META,
     "spec": {"finalizers": ["kubernetes"]},
     "status": {"phase": "Terminating", "conditions": [
         {"type": "NamespaceDeletionContentFailure", "status": "False", "lastTransitionTime": T1,
          "reason": "ContentDeleted", "message": "done"}]}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": META, "immutable": False,
     "data": {"event.tokenKey": "123", "event.tokenTimestamp": T1},
     "binaryData": {"raw": base64.b64encode(bytes(range(256))).decode()}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": META, "immutable": True, "type": "Opaque",
     "data": {"api-key": "c2VjcmV0"}, "stringData": {"plain": "text"}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": META, "secrets": [{"name": "s"}],
     "imagePullSecrets": [{"name": "regcred"}], "automountServiceAccountToken": False},
    {"apiVersion": "v1", "kind": "Endpoints",
     "metadata": {"name": "datadog-leader-election",
                  "annotations": {"control-plane.alpha.kubernetes.io/leader": LEADER}},
     "subsets": [{"addresses": [{"ip": "10.0.0.1", "hostname": "h", "nodeName": "n1",
                                 "targetRef": REF}],
                  "notReadyAddresses": [{"ip": "10.0.0.2"}],
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http"},
                            {"port": 0}]}]},
    {"apiVersion": "v1", "kind": "Event", "metadata": META, "involvedObject": REF,
     "reason": "BackOff", "message": "Back-off restarting", "source": {"component": "kubelet",
     "host": "node-1"}, "firstTimestamp": T1, "lastTimestamp": T2, "count": 7, "type": "Warning",
     "eventTime": MT1, "series": {"count": 2, "lastObservedTime": MT2}, "action": "Restart",
     "related": REF, "reportingComponent": "", "reportingInstance": "kubelet-node-1"},
    {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": META, "eventTime": MT1,
     "series": {"count": 0, "lastObservedTime": MT2}, "reportingController": "kubelet",
     "reportingInstance": "node-1", "action": "Pull", "reason": "Pulled", "regarding": REF,
     "related": REF, "note": "pulled", "type": "Normal", "deprecatedSource": {"component": "k"},
     "deprecatedFirstTimestamp": T1, "deprecatedLastTimestamp": T2, "deprecatedCount": 4},
    {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": META,
     "spec": {"holderIdentity": "pod-1", "leaseDurationSeconds": 60, "acquireTime": MT1,
              "renewTime": MT2, "leaseTransitions": 0, "strategy": "OldestEmulationVersion",
              "preferredHolder": ""}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": META,
     "rules": RULES},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": META,
     "rules": RULES, "aggregationRule": {"clusterRoleSelectors": [SELECTOR, {}]}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": META,
     "subjects": SUBJECTS, "roleRef": ROLE_REF},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": META, "subjects": SUBJECTS, "roleRef": ROLE_REF | {"kind": "ClusterRole"}},
    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": META,
     "spec": {"audiences": ["api"], "expirationSeconds": 3600, "boundObjectRef": {
         "kind": "Pod", "apiVersion": "v1", "name": "web-1", "uid": "6f1c"}},
     "status": {"token": "", "expirationTimestamp": T2}},
    {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {},
     "status": {"userInfo": {"username": "system:serviceaccount:default:agent", "uid": "u",
                             "groups": ["system:serviceaccounts"],
                             "extra": {"authentication.kubernetes.io/pod-name": ["p"]}}}},
    {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {},
     "spec": {"resourceAttributes": {
         "namespace": "default", "verb": "watch", "group": "events.k8s.io", "version": "v1",
         "resource": "events", "name": "x",
         "fieldSelector": {"rawSelector": "type=Warning",
                           "requirements": [{"key": "type", "operator": "In",
                                             "values": ["Warning"]}]},
         "labelSelector": {"rawSelector": "a=b"}}},
     "status": {"allowed": True, "reason": "RBAC: allowed"}},
    {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "metadata": {},
     "spec": {"namespace": "default"},
     "status": {"resourceRules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"],
                                   "resourceNames": ["p"]}],
                "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/readyz"]}],
                "incomplete": True, "evaluationError": "partial"}},
] + [
    {"apiVersion": api_version, "kind": "DeleteOptions", "gracePeriodSeconds": 0,
     "preconditions": {"uid": "u1", "resourceVersion": ""}, "orphanDependents": False,
     "propagationPolicy": "Background", "dryRun": ["All"],
     "ignoreStoreReadErrorWithClusterBreakingPotential": False}
    for api_version, kind in KINDS if kind == "DeleteOptions"
]  # fmt: skip


def test_round_trip_fixtures_cover_every_kind():
    assert {(obj["apiVersion"], obj["kind"]) for obj in FULL} == set(KINDS)


@pytest.mark.parametrize("obj", FULL, ids=lambda o: f"{o['apiVersion']}/{o['kind']}")
def test_round_trip_every_kind(obj):
    assert decode(encode(obj)) == obj


def full(api_version: str, kind: str) -> dict[str, Any]:
    return next(o for o in FULL if (o["apiVersion"], o["kind"]) == (api_version, kind))


def test_zero_values_follow_go_omitempty():
    """FULL keeps only zeros Go's JSON keeps; explicit zeros of omitempty fields go away."""
    # Core Event series.count is omitempty, events.k8s.io's is not; reportingComponent
    # and an EndpointPort's port have no omitempty.
    core = decode(encode(full("v1", "Event") | {"series": {"count": 0}, "count": 0}))
    assert core["series"] == {}
    assert "count" not in core
    assert core["reportingComponent"] == ""
    assert decode(encode(full("events.k8s.io/v1", "Event")))["series"]["count"] == 0
    review = full("authorization.k8s.io/v1", "SelfSubjectAccessReview")
    attributes = review["spec"]["resourceAttributes"] | {"subresource": "", "name": ""}
    status = {"allowed": False, "denied": False, "reason": "", "evaluationError": ""}
    ssar = decode(encode(review | {"spec": {"resourceAttributes": attributes}, "status": status}))
    assert ssar["spec"]["resourceAttributes"] == {k: v for k, v in attributes.items() if v}
    assert ssar["status"] == {"allowed": False}
    # Pointers set to zero stay: an immediate delete is not "no grace period given".
    options = decode(encode(full("v1", "DeleteOptions")))
    assert options["gracePeriodSeconds"] == 0
    assert options["orphanDependents"] is False
    assert options["preconditions"] == {"uid": "u1", "resourceVersion": ""}
    secret = decode(encode(full("v1", "Secret") | {"type": "", "immutable": False}))
    assert "type" not in secret
    assert secret["immutable"] is False
    assert decode(encode(full("v1", "Secret") | {"data": {"empty": ""}}))["data"] == {"empty": ""}


def test_times():
    before_epoch = "1969-12-31T23:59:59.999999Z"
    event = decode(encode(full("events.k8s.io/v1", "Event") | {"eventTime": before_epoch}))
    assert event["eventTime"] == before_epoch
    assert event["deprecatedFirstTimestamp"] == T1
    assert event["series"]["lastObservedTime"] == MT2
    # metav1.Time is whole seconds on the JSON side even if a client sends nanos.
    cm = message_class("core.ConfigMap")()
    cm.metadata.creationTimestamp.seconds = 1_764_061_200
    cm.metadata.creationTimestamp.nanos = 999_999_999
    cm.metadata.deletionTimestamp.seconds = 0  # explicit epoch is not the zero time
    cm.metadata.managedFields.add().time.SetInParent()  # empty Time message: Go's zero time
    obj = decode(_envelope("v1", "ConfigMap", cm.SerializeToString()))
    assert obj["metadata"]["creationTimestamp"] == "2025-11-25T09:00:00Z"
    assert obj["metadata"]["deletionTimestamp"] == "1970-01-01T00:00:00Z"
    assert obj["metadata"]["managedFields"] == [{}]


def test_unknown_fields_are_skipped_like_the_api_server_does():
    raw = message_class("core.ConfigMap")(data={"a": "b"}).SerializeToString()
    raw += b"\xfa\x01\x03abc"  # field 31, length-delimited: unknown to ConfigMap
    assert decode(_envelope("v1", "ConfigMap", raw))["data"] == {"a": "b"}


# --- errors -------------------------------------------------------------------------------


def _envelope(api_version: str, kind: str, raw: bytes, encoding: str = "") -> bytes:
    envelope = message_class("runtime.Unknown")(raw=raw, contentEncoding=encoding)
    envelope.typeMeta.apiVersion, envelope.typeMeta.kind = api_version, kind
    return MAGIC + envelope.SerializeToString()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"kind":"ConfigMap"}', "does not start with the k8s\\x00 envelope prefix"),
        (MAGIC + b"\x0a\xff\xff", "malformed runtime.Unknown protobuf envelope"),
        (_envelope("apps/v1", "Deployment", b""), "unsupported kind 'Deployment' in apiVersion"),
        (_envelope("v1", "Pod", b""), "unsupported kind 'Pod'"),
        (_envelope("v2", "ConfigMap", b""), "unsupported kind 'ConfigMap' in apiVersion 'v2'"),
        (_envelope("v1", "ConfigMap", b"", "gzip"), "unsupported contentEncoding 'gzip'"),
        (_envelope("v1", "ConfigMap", b"\x0a\x05ab"), "malformed v1 ConfigMap protobuf message"),
        (_envelope("v1", "Secret", b"\x12\x04\x0a\x02\xc3\x28"), "malformed v1 Secret"),
    ],
)
def test_bad_bodies_raise_one_line_protobuf_errors(body, message):
    with pytest.raises(ProtobufError) as info:
        decode(body)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_fieldsv1_that_is_not_json_is_an_error():
    cm = message_class("core.ConfigMap")()
    cm.metadata.managedFields.add().fieldsV1.Raw = b"{not json"
    with pytest.raises(ProtobufError, match="malformed v1 ConfigMap"):
        decode(_envelope("v1", "ConfigMap", cm.SerializeToString()))


# --- live kubectl -------------------------------------------------------------------------

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH")
GZIP = re.compile(rb"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # Go's gzip.Writer header


@pytest.fixture(scope="module")
def kubectl_messages() -> dict[str, descriptor_pb2.DescriptorProto]:
    """Message descriptors compiled into the kubectl binary (gogo-protobuf registers each
    generated.proto as a gzipped FileDescriptorProto), by full name."""
    data = memoryview(Path(os.path.realpath(KUBECTL)).read_bytes())
    found: dict[str, descriptor_pb2.DescriptorProto] = {}
    for match in GZIP.finditer(data):
        try:
            raw = zlib.decompressobj(31).decompress(data[match.start() : match.start() + (1 << 22)])
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
        except (zlib.error, DecodeError):
            continue
        if not file.package.startswith("k8s.io."):
            continue
        pending = [(f"{file.package}.{m.name}", m) for m in file.message_type]
        while pending:
            name, message = pending.pop()
            found[name] = message
            pending += [(f"{name}.{n.name}", n) for n in message.nested_type]
    if not found:
        pytest.skip(f"no k8s.io protobuf descriptors in {KUBECTL}")
    return found


def _repeated(field: FieldDescriptor) -> bool:
    # ``is_repeated`` is new in protobuf 6.31, and ``label`` is gone in 7.
    repeated = getattr(field, "is_repeated", None)
    return field.label == field.LABEL_REPEATED if repeated is None else repeated


@pytest.mark.kubectl
@needs_kubectl
def test_schema_matches_the_descriptors_compiled_into_kubectl(kubectl_messages):
    roots = {"runtime.Unknown", *KINDS.values()}
    pending = [message_class(ref).DESCRIPTOR for ref in roots]
    seen: set[str] = set()
    while pending:
        ours = pending.pop()
        if ours.full_name in seen:
            continue
        seen.add(ours.full_name)
        theirs = kubectl_messages[ours.full_name]
        mine = {f.number: (f.name.lower(), f.type, f.message_type and f.message_type.full_name,
                           _repeated(f)) for f in ours.fields}  # fmt: skip
        real = {f.number: (f.name.lower(), f.type, f.type_name.lstrip(".") or None,
                           f.label == f.LABEL_REPEATED) for f in theirs.field}  # fmt: skip
        # Every field this kubectl can send is in the schema with its number and type (the
        # schema may know newer fields: DeleteOptions field 6 is from 1.32).
        assert {n: mine.get(n) for n in real} == real, ours.full_name
        pending += [f.message_type for f in ours.fields if f.message_type is not None]
    assert len(seen) > 60


def _closed_port_kubeconfig(tmp_path: Path) -> Path:
    with socket.socket() as sock:  # a port nobody listens on: kubectl logs, then fails
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "dead.kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u, namespace: default}}]\n"
    )
    return path


def kubectl_request_bodies(stderr: str) -> list[bytes]:
    """The request bodies in kubectl's ``-v=10`` log (client-go hex-dumps binary bodies)."""
    bodies = []
    for dump in re.findall(r'"Request Body" body=<\n(.*?)\n\s*>', stderr, re.S):
        hex_bytes = [line.split("|")[0].split()[1:] for line in dump.splitlines()]
        bodies.append(bytes.fromhex("".join(b for line in hex_bytes for b in line)))
    return bodies


def run_kubectl(args: str, tmp_path: Path, kubeconfig: Path) -> subprocess.CompletedProcess:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\xff\xfe\x01k8s")
    argv = [KUBECTL, *args.format(blob=blob).split(), f"--kubeconfig={kubeconfig}",
            f"--cache-dir={tmp_path / 'cache'}"]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.kubectl
@needs_kubectl
@pytest.mark.parametrize("name", sorted(set(VECTORS) - NEEDS_DISCOVERY))
def test_live_kubectl_body_decodes_to_its_json(name, tmp_path):
    kubeconfig = _closed_port_kubeconfig(tmp_path)
    sent = run_kubectl(f"{VECTORS[name]} -v=10", tmp_path, kubeconfig)
    bodies = kubectl_request_bodies(sent.stderr)
    assert len(bodies) == 1, sent.stderr[-2000:]
    assert bodies[0].startswith(MAGIC)
    if name in EXPECTED:
        want = EXPECTED[name]
    else:  # kubectl's own JSON of the same object, rendered now
        dry_run = run_kubectl(f"{VECTORS[name]} --dry-run=client -o json", tmp_path, kubeconfig)
        want = drop_nulls(json.loads(dry_run.stdout))
    assert decode(bodies[0]) == want


# --- end to end: kubectl -> kubesim -> official client ---------------------------------------

CREATES = [name for name, args in VECTORS.items() if args.startswith("create ")]


def contains(got: Any, want: Any) -> bool:
    """``want`` is part of ``got``: dict keys recursively (the server adds uid, defaults...)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(contains(got.get(k), v) for k, v in want.items())
    return got == want


@pytest.fixture(scope="module")
def sim():
    from kubesim.runner import KubeSim

    with KubeSim(tls=True) as running:  # client-go sends bearer tokens over TLS only
        if not running.features["protobuf"]:
            pytest.fail("kubesim did not load kubesim.protobuf")
        yield running


@pytest.mark.kubectl
@needs_kubectl
def test_kubectl_typed_creates_against_kubesim(sim, tmp_path):
    from kubernetes.dynamic import DynamicClient

    cluster = DynamicClient(sim.api_client())
    for name in CREATES:  # in VECTORS order: the service account exists before its token
        ran = run_kubectl(f"{VECTORS[name]} -v=10", tmp_path, Path(sim.kubeconfig))
        assert ran.returncode == 0, f"kubectl {VECTORS[name]}: {ran.stderr[-1500:]}"
        bodies = [b for b in kubectl_request_bodies(ran.stderr) if b.startswith(MAGIC)]
        want = expected(name)
        assert [decode(b) for b in bodies] == [want], name
        if want["kind"] == "TokenRequest":
            assert ran.stdout.count(".") == 2, ran.stdout  # kubectl prints the issued JWT
            continue
        resource = cluster.resources.get(api_version=want["apiVersion"], kind=want["kind"])
        namespace = "kube-system" if "-n kube-system" in VECTORS[name] else "default"
        stored = resource.get(name=want["metadata"]["name"],
                              namespace=namespace if resource.namespaced else None).to_dict()
        assert contains(stored, want), (name, stored)
        assert stored["metadata"]["uid"]
