"""Decode ``application/vnd.kubernetes.protobuf`` request bodies into JSON-form dicts.

kubectl's typed commands (``create configmap|secret|namespace|serviceaccount|role|...``,
``create token``, ``auth can-i``, ``auth whoami``) send their bodies as protobuf: the
``k8s\\x00`` magic, then a ``runtime.Unknown`` envelope whose ``raw`` is the object's message
(k8s.io/apimachinery/pkg/runtime/serializer/protobuf). The messages kubesim needs are
described by ``_SCHEMA`` below, transcribed from the ``generated.proto`` files kubectl 1.32
is built from (a test compares it with the descriptors compiled into the kubectl binary);
the ``protobuf`` package does the wire parsing.

``decode`` returns the dict the JSON body of the same object would give, i.e. Go's
``encoding/json`` of the k8s type: fields by their JSON names; an unset or zero scalar whose
Go field is ``omitempty`` is left out; a scalar marked ``!`` (a Go pointer, or a field
without ``omitempty``) is kept even when zero, if it is on the wire; nested structs present
on the wire stay, even empty (Go never omits structs); ``Time`` becomes RFC 3339 seconds,
``MicroTime`` RFC 3339 with microseconds, a zero time (JSON ``null``) is left out; bytes
become standard base64; ``FieldsV1`` becomes the JSON it holds. Unknown fields are skipped,
as the real API server's protobuf decoder does.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

__all__ = ["KINDS", "MAGIC", "ProtobufError", "decode", "message_class"]

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """The body is not a protobuf-encoded object of a kind kubesim can read."""


# Proto package of each schema prefix (as in the generated.proto files).
_PACKAGES = {
    "runtime": "k8s.io.apimachinery.pkg.runtime",
    "meta": "k8s.io.apimachinery.pkg.apis.meta.v1",
    "core": "k8s.io.api.core.v1",
    "coordination": "k8s.io.api.coordination.v1",
    "events": "k8s.io.api.events.v1",
    "rbac": "k8s.io.api.rbac.v1",
    "authentication": "k8s.io.api.authentication.v1",
    "authorization": "k8s.io.api.authorization.v1",
}

# One message per entry: ``jsonName=number[:type][!]``. Type defaults to string; a scalar
# (int32, int64, bool, bytes), a message (``pkg.Name``), ``[T]`` repeated, ``{T}`` a map
# with string keys. ``!`` keeps a zero value (pointer or non-omitempty Go field).
# Only the messages of the kinds kubesim serves (and what kubectl sends to it).
_SCHEMA: dict[str, str] = {
    "runtime.TypeMeta": "apiVersion=1 kind=2",
    "runtime.Unknown": "typeMeta=1:runtime.TypeMeta raw=2:bytes contentEncoding=3 contentType=4",
    "meta.Time": "seconds=1:int64 nanos=2:int32",
    "meta.MicroTime": "seconds=1:int64 nanos=2:int32",
    "meta.FieldsV1": "Raw=1:bytes",
    "meta.ObjectMeta": "name=1 generateName=2 namespace=3 selfLink=4 uid=5 resourceVersion=6"
    " generation=7:int64 creationTimestamp=8:meta.Time deletionTimestamp=9:meta.Time"
    " deletionGracePeriodSeconds=10:int64! labels=11:{string} annotations=12:{string}"
    " ownerReferences=13:[meta.OwnerReference] finalizers=14:[string]"
    " managedFields=17:[meta.ManagedFieldsEntry]",
    "meta.OwnerReference": "apiVersion=5! kind=1! name=3! uid=4! controller=6:bool!"
    " blockOwnerDeletion=7:bool!",
    "meta.ManagedFieldsEntry": "manager=1 operation=2 apiVersion=3 time=4:meta.Time"
    " fieldsType=6 fieldsV1=7:meta.FieldsV1 subresource=8",
    "meta.LabelSelector": "matchLabels=1:{string}"
    " matchExpressions=2:[meta.LabelSelectorRequirement]",
    "meta.LabelSelectorRequirement": "key=1! operator=2! values=3:[string]",
    "meta.FieldSelectorRequirement": "key=1! operator=2! values=3:[string]",
    "meta.Preconditions": "uid=1! resourceVersion=2!",
    "meta.DeleteOptions": "gracePeriodSeconds=1:int64! preconditions=2:meta.Preconditions"
    " orphanDependents=3:bool! propagationPolicy=4! dryRun=5:[string]"
    " ignoreStoreReadErrorWithClusterBreakingPotential=6:bool!",
    "core.ObjectReference": "kind=1 namespace=2 name=3 uid=4 apiVersion=5 resourceVersion=6"
    " fieldPath=7",
    "core.LocalObjectReference": "name=1",
    "core.Namespace": "metadata=1:meta.ObjectMeta spec=2:core.NamespaceSpec"
    " status=3:core.NamespaceStatus",
    "core.NamespaceSpec": "finalizers=1:[string]",
    "core.NamespaceStatus": "phase=1 conditions=2:[core.NamespaceCondition]",
    "core.NamespaceCondition": "type=1! status=2! lastTransitionTime=4:meta.Time reason=5"
    " message=6",
    "core.ConfigMap": "metadata=1:meta.ObjectMeta immutable=4:bool! data=2:{string}"
    " binaryData=3:{bytes}",
    "core.Secret": "metadata=1:meta.ObjectMeta immutable=5:bool! data=2:{bytes}"
    " stringData=4:{string} type=3",
    "core.ServiceAccount": "metadata=1:meta.ObjectMeta secrets=2:[core.ObjectReference]"
    " imagePullSecrets=3:[core.LocalObjectReference] automountServiceAccountToken=4:bool!",
    "core.Endpoints": "metadata=1:meta.ObjectMeta subsets=2:[core.EndpointSubset]",
    "core.EndpointSubset": "addresses=1:[core.EndpointAddress]"
    " notReadyAddresses=2:[core.EndpointAddress] ports=3:[core.EndpointPort]",
    "core.EndpointAddress": "ip=1! hostname=3 nodeName=4! targetRef=2:core.ObjectReference",
    "core.EndpointPort": "name=1 port=2:int32! protocol=3 appProtocol=4!",
    "core.Event": "metadata=1:meta.ObjectMeta involvedObject=2:core.ObjectReference reason=3"
    " message=4 source=5:core.EventSource firstTimestamp=6:meta.Time lastTimestamp=7:meta.Time"
    " count=8:int32 type=9 eventTime=10:meta.MicroTime series=11:core.EventSeries action=12"
    " related=13:core.ObjectReference reportingComponent=14! reportingInstance=15!",
    "core.EventSource": "component=1 host=2",
    "core.EventSeries": "count=1:int32 lastObservedTime=2:meta.MicroTime",
    "coordination.Lease": "metadata=1:meta.ObjectMeta spec=2:coordination.LeaseSpec",
    "coordination.LeaseSpec": "holderIdentity=1! leaseDurationSeconds=2:int32!"
    " acquireTime=3:meta.MicroTime renewTime=4:meta.MicroTime leaseTransitions=5:int32!"
    " strategy=6! preferredHolder=7!",
    "events.Event": "metadata=1:meta.ObjectMeta eventTime=2:meta.MicroTime"
    " series=3:events.EventSeries reportingController=4 reportingInstance=5 action=6 reason=7"
    " regarding=8:core.ObjectReference related=9:core.ObjectReference note=10 type=11"
    " deprecatedSource=12:core.EventSource deprecatedFirstTimestamp=13:meta.Time"
    " deprecatedLastTimestamp=14:meta.Time deprecatedCount=15:int32",
    "events.EventSeries": "count=1:int32! lastObservedTime=2:meta.MicroTime",
    "rbac.Role": "metadata=1:meta.ObjectMeta rules=2:[rbac.PolicyRule]",
    "rbac.ClusterRole": "metadata=1:meta.ObjectMeta rules=2:[rbac.PolicyRule]"
    " aggregationRule=3:rbac.AggregationRule",
    "rbac.AggregationRule": "clusterRoleSelectors=1:[meta.LabelSelector]",
    "rbac.PolicyRule": "verbs=1:[string] apiGroups=2:[string] resources=3:[string]"
    " resourceNames=4:[string] nonResourceURLs=5:[string]",
    "rbac.RoleBinding": "metadata=1:meta.ObjectMeta subjects=2:[rbac.Subject]"
    " roleRef=3:rbac.RoleRef",
    "rbac.ClusterRoleBinding": "metadata=1:meta.ObjectMeta subjects=2:[rbac.Subject]"
    " roleRef=3:rbac.RoleRef",
    "rbac.RoleRef": "apiGroup=1! kind=2! name=3!",
    "rbac.Subject": "kind=1! apiGroup=2 name=3! namespace=4",
    "authentication.TokenRequest": "metadata=1:meta.ObjectMeta"
    " spec=2:authentication.TokenRequestSpec status=3:authentication.TokenRequestStatus",
    "authentication.TokenRequestSpec": "audiences=1:[string] expirationSeconds=4:int64!"
    " boundObjectRef=3:authentication.BoundObjectReference",
    # Field 4 is named "uID" in the .proto; its JSON name is "uid".
    "authentication.BoundObjectReference": "kind=1 apiVersion=2 name=3 uid=4",
    "authentication.TokenRequestStatus": "token=1! expirationTimestamp=2:meta.Time",
    "authentication.SelfSubjectReview": "metadata=1:meta.ObjectMeta"
    " status=2:authentication.SelfSubjectReviewStatus",
    "authentication.SelfSubjectReviewStatus": "userInfo=1:authentication.UserInfo",
    "authentication.UserInfo": "username=1 uid=2 groups=3:[string]"
    " extra=4:{authentication.ExtraValue}",
    "authentication.ExtraValue": "items=1:[string]",
    "authorization.SelfSubjectAccessReview": "metadata=1:meta.ObjectMeta"
    " spec=2:authorization.SelfSubjectAccessReviewSpec"
    " status=3:authorization.SubjectAccessReviewStatus",
    "authorization.SelfSubjectAccessReviewSpec": "nonResourceAttributes=2:authorization."
    "NonResourceAttributes resourceAttributes=1:authorization.ResourceAttributes",
    "authorization.ResourceAttributes": "namespace=1 verb=2 group=3 version=4 resource=5"
    " subresource=6 name=7 fieldSelector=8:authorization.FieldSelectorAttributes"
    " labelSelector=9:authorization.LabelSelectorAttributes",
    "authorization.FieldSelectorAttributes": "rawSelector=1"
    " requirements=2:[meta.FieldSelectorRequirement]",
    "authorization.LabelSelectorAttributes": "rawSelector=1"
    " requirements=2:[meta.LabelSelectorRequirement]",
    "authorization.NonResourceAttributes": "path=1 verb=2",
    "authorization.SubjectAccessReviewStatus": "allowed=1:bool! denied=4:bool reason=2"
    " evaluationError=3",
    "authorization.SelfSubjectRulesReview": "metadata=1:meta.ObjectMeta"
    " spec=2:authorization.SelfSubjectRulesReviewSpec"
    " status=3:authorization.SubjectRulesReviewStatus",
    "authorization.SelfSubjectRulesReviewSpec": "namespace=1",
    "authorization.SubjectRulesReviewStatus": "resourceRules=1:[authorization.ResourceRule]"
    " nonResourceRules=2:[authorization.NonResourceRule] incomplete=3:bool!"
    " evaluationError=4",
    "authorization.ResourceRule": "verbs=1:[string] apiGroups=2:[string] resources=3:[string]"
    " resourceNames=4:[string]",
    "authorization.NonResourceRule": "verbs=1:[string] nonResourceURLs=2:[string]",
}

_KINDS: dict[tuple[str, str], str] = {
    ("v1", "Namespace"): "core.Namespace",
    ("v1", "ConfigMap"): "core.ConfigMap",
    ("v1", "Endpoints"): "core.Endpoints",
    ("v1", "Event"): "core.Event",
    ("v1", "ServiceAccount"): "core.ServiceAccount",
    ("v1", "Secret"): "core.Secret",
    ("coordination.k8s.io/v1", "Lease"): "coordination.Lease",
    ("events.k8s.io/v1", "Event"): "events.Event",
    ("rbac.authorization.k8s.io/v1", "Role"): "rbac.Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rbac.RoleBinding",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "rbac.ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "rbac.ClusterRoleBinding",
    ("authentication.k8s.io/v1", "TokenRequest"): "authentication.TokenRequest",
    ("authentication.k8s.io/v1", "SelfSubjectReview"): "authentication.SelfSubjectReview",
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): "authorization.SelfSubjectAccessReview",
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): "authorization.SelfSubjectRulesReview",
} | {
    (api_version, "DeleteOptions"): "meta.DeleteOptions"
    for api_version in (
        "meta.k8s.io/v1",
        "v1",
        "coordination.k8s.io/v1",
        "events.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
    )
}
KINDS: Mapping[tuple[str, str], str] = MappingProxyType(_KINDS)
"""(apiVersion, kind) -> schema message: the bodies ``decode`` reads. DeleteOptions is
accepted in every group version kubesim serves, as the real server registers it in each."""

_LABEL_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_LABEL_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_SCALARS = {
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
    "bool": FieldDescriptor.TYPE_BOOL,
    "int32": FieldDescriptor.TYPE_INT32,
    "int64": FieldDescriptor.TYPE_INT64,
}
_FIELD = re.compile(r"(\w+)=(\d+)(?::(\[[\w.]+\]|\{[\w.]+\}|[\w.]+))?(!?)")


def _full_name(ref: str) -> str:
    prefix, _, name = ref.partition(".")
    return f"{_PACKAGES[prefix]}.{name}"


def _set_type(field: descriptor_pb2.FieldDescriptorProto, ref: str) -> None:
    if ref in _SCALARS:
        field.type = _SCALARS[ref]
    else:
        field.type = FieldDescriptor.TYPE_MESSAGE
        field.type_name = "." + _full_name(ref)


def _add_field(message: descriptor_pb2.DescriptorProto, owner: str, token: str) -> str:
    """Add one ``_SCHEMA`` field to ``message``; return the schema type it refers to."""
    match = _FIELD.fullmatch(token)
    if match is None:
        raise AssertionError(f"bad schema field {token!r} in {owner}")
    name, number, type_ref, _ = match.groups()
    type_ref = type_ref or "string"
    field = message.field.add(name=name, number=int(number), label=_LABEL_OPTIONAL)
    if type_ref[0] == "[":
        field.label = _LABEL_REPEATED
        type_ref = type_ref[1:-1]
        _set_type(field, type_ref)
    elif type_ref[0] == "{":
        # A proto map is a repeated nested ``<Name>Entry`` message with key=1, value=2.
        type_ref = type_ref[1:-1]
        entry = message.nested_type.add(name=name[0].upper() + name[1:] + "Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, label=_LABEL_OPTIONAL, type=_SCALARS["string"])
        _set_type(entry.field.add(name="value", number=2, label=_LABEL_OPTIONAL), type_ref)
        field.label = _LABEL_REPEATED
        field.type = FieldDescriptor.TYPE_MESSAGE
        field.type_name = f".{_full_name(owner)}.{entry.name}"
    else:
        _set_type(field, type_ref)
    return type_ref


def _build_files() -> tuple[list[descriptor_pb2.FileDescriptorProto], frozenset[str]]:
    """FileDescriptorProtos for ``_SCHEMA`` (one per proto package) and the keep-zero fields."""
    files = {
        prefix: descriptor_pb2.FileDescriptorProto(
            name=f"kubesim/{prefix}.proto", package=package, syntax="proto2"
        )
        for prefix, package in _PACKAGES.items()
    }
    keep: set[str] = set()
    for ref, spec in _SCHEMA.items():
        prefix, _, name = ref.partition(".")
        file = files[prefix]
        message = file.message_type.add(name=name)
        for token in spec.split():
            type_ref = _add_field(message, ref, token)
            dep = files[type_ref.partition(".")[0]].name if "." in type_ref else file.name
            if dep != file.name and dep not in file.dependency:
                file.dependency.append(dep)
            if token.endswith("!"):
                keep.add(f"{_full_name(ref)}.{token.partition('=')[0]}")
    return list(files.values()), frozenset(keep)


def _load() -> tuple[descriptor_pool.DescriptorPool, frozenset[str]]:
    files, keep = _build_files()
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    while len(added) < len(files):  # dependencies first
        for file in files:
            if file.name not in added and set(file.dependency) <= added:
                pool.Add(file)
                added.add(file.name)
    return pool, keep


_POOL, _KEEP_ZERO = _load()


def message_class(ref: str) -> type[Message]:
    """The generated message class of a schema entry, e.g. ``message_class("core.ConfigMap")``."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(_full_name(ref)))


_UNKNOWN = message_class("runtime.Unknown")
_EPOCH = datetime(1970, 1, 1)
_TIME = _full_name("meta.Time")
_MICRO_TIME = _full_name("meta.MicroTime")
_FIELDS_V1 = _full_name("meta.FieldsV1")
_EXTRA_VALUE = _full_name("authentication.ExtraValue")
_CLASSES = {key: message_class(ref) for key, ref in KINDS.items()}


def decode(body: bytes) -> dict[str, Any]:
    """Turn a kubectl protobuf request body into the dict its JSON form would give.

    Raises ``ProtobufError`` (one line, no body bytes) when the envelope is missing or
    malformed, or the kind is not one kubesim serves.
    """
    if not body.startswith(MAGIC):
        raise ProtobufError("protobuf body does not start with the k8s\\x00 envelope prefix")
    envelope = _UNKNOWN()
    try:
        envelope.ParseFromString(body[len(MAGIC) :])
    except DecodeError as exc:
        raise ProtobufError(f"malformed runtime.Unknown protobuf envelope: {exc}") from None
    api_version, kind = envelope.typeMeta.apiVersion, envelope.typeMeta.kind
    if envelope.contentEncoding:
        raise ProtobufError(f"unsupported contentEncoding {envelope.contentEncoding!r}")
    cls = _CLASSES.get((api_version, kind))
    if cls is None:
        raise ProtobufError(f"unsupported kind {kind!r} in apiVersion {api_version!r}")
    obj = cls()
    try:
        obj.ParseFromString(envelope.raw)
        fields = _to_json(obj)
    except (DecodeError, ValueError, OverflowError) as exc:
        raise ProtobufError(f"malformed {api_version} {kind} protobuf message: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **fields}


def _to_json(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if _is_repeated(field):
            if _is_map(field):
                value_field = field.message_type.fields_by_name["value"]
                out[field.name] = {k: _value(value_field, v) for k, v in value.items()}
            else:
                out[field.name] = [_value(field, item) for item in value]
            continue
        if field.type != field.TYPE_MESSAGE and not value and field.full_name not in _KEEP_ZERO:
            continue  # Go's omitempty
        converted = _value(field, value)
        if converted is not None:
            out[field.name] = converted
    return out


def _is_repeated(field: FieldDescriptor) -> bool:
    # ``is_repeated`` is new in protobuf 6.31, and ``label`` is gone in 7.
    repeated = getattr(field, "is_repeated", None)
    return field.label == field.LABEL_REPEATED if repeated is None else repeated


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == field.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == field.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if field.type != field.TYPE_MESSAGE:
        return value
    return _special(field.message_type, value)


def _special(descriptor: Descriptor, value: Message) -> Any:
    """Types whose JSON form is not an object of their fields (None means JSON null)."""
    name = descriptor.full_name
    if name in (_TIME, _MICRO_TIME):
        if not value.ListFields():
            return None  # an empty message is Go's zero time, JSON null
        when = _EPOCH + timedelta(seconds=value.seconds)
        if name == _TIME:  # metav1.Time keeps whole seconds only (RFC 3339)
            return when.isoformat(timespec="seconds") + "Z"
        when += timedelta(microseconds=value.nanos // 1000)  # RFC3339Micro
        return when.isoformat(timespec="microseconds") + "Z"
    if name == _FIELDS_V1:
        return orjson.loads(value.Raw) if value.Raw else None
    if name == _EXTRA_VALUE:
        return list(value.items)
    return _to_json(value)
