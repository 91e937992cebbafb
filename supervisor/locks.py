"""Resource locks for leader election: where the client-go ``LeaderElectionRecord`` lives.

Endpoints and ConfigMap locks keep the record as JSON in the annotation
``control-plane.alpha.kubernetes.io/leader`` (what the Datadog Cluster Agent and older
client-go use); a Lease keeps it in its spec. Every write is a compare-and-swap on
``metadata.resourceVersion`` of the object last read or written, so a 409 means somebody
else wrote in between (client-go's ``resourcelock`` package, one class per kind here).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import urllib3

from workers.kubeapi import ApiError, KubeApi, watch_lines

__all__ = ["LOCK_KINDS", "LeaderRecord", "ResourceLock", "make_lock"]

LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    """client-go's LeaderElectionRecord. Times are informative only: expiry is judged by the
    observer's own clock from when it last saw the record change."""

    holder_identity: str = ""
    lease_duration_seconds: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    leader_transitions: int = 0

    def to_annotation(self) -> str:
        # Field names and RFC 3339 second precision as client-go's json tags / metav1.Time.
        return orjson.dumps(
            {
                "holderIdentity": self.holder_identity,
                "leaseDurationSeconds": self.lease_duration_seconds,
                "acquireTime": _rfc3339(self.acquire_time),
                "renewTime": _rfc3339(self.renew_time),
                "leaderTransitions": self.leader_transitions,
            }
        ).decode()

    @classmethod
    def from_annotation(cls, text: str) -> LeaderRecord:
        data = orjson.loads(text)
        if not isinstance(data, dict):
            raise ValueError("leader annotation is not a JSON object")
        return cls(
            holder_identity=str(data.get("holderIdentity") or ""),
            lease_duration_seconds=int(data.get("leaseDurationSeconds") or 0),
            acquire_time=_parse_time(data.get("acquireTime")),
            renew_time=_parse_time(data.get("renewTime")),
            leader_transitions=int(data.get("leaderTransitions") or 0),
        )

    def to_lease_spec(self) -> dict[str, Any]:
        # A Lease's times are MicroTime; an empty holder is written as absent, as client-go.
        spec: dict[str, Any] = {
            "leaseDurationSeconds": self.lease_duration_seconds,
            "leaseTransitions": self.leader_transitions,
            "acquireTime": _rfc3339_micro(self.acquire_time),
            "renewTime": _rfc3339_micro(self.renew_time),
        }
        if self.holder_identity:
            spec["holderIdentity"] = self.holder_identity
        return spec

    @classmethod
    def from_lease_spec(cls, spec: dict[str, Any]) -> LeaderRecord:
        return cls(
            holder_identity=str(spec.get("holderIdentity") or ""),
            lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=_parse_time(spec.get("acquireTime")),
            renew_time=_parse_time(spec.get("renewTime")),
            leader_transitions=int(spec.get("leaseTransitions") or 0),
        )


class ResourceLock:
    """One lock object. Remembers the object it last read or wrote, for the next CAS."""

    kind = "endpoints"
    api_version = "v1"
    collection = "/api/v1/namespaces/{namespace}/endpoints"

    def __init__(self, api: KubeApi, *, namespace: str, name: str, identity: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self._object: dict[str, Any] | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def collection_path(self) -> str:
        return self.collection.format(namespace=self.namespace)

    @property
    def path(self) -> str:
        return f"{self.collection_path}/{self.name}"

    @property
    def resource_version(self) -> str:
        return str(((self._object or {}).get("metadata") or {}).get("resourceVersion") or "")

    def get(self, timeout: float | None = None) -> LeaderRecord | None:
        """The current record, or None if the object does not exist (404)."""
        try:
            obj = self.api.get(self.path, timeout=timeout)
        except ApiError as exc:
            if exc.code == 404:
                self._object = None
                return None
            raise
        self._object = obj
        return self.record_of(obj)

    def create(self, record: LeaderRecord, timeout: float | None = None) -> None:
        """Create the lock object holding ``record``; 409 AlreadyExists if someone beat us."""
        body = self._with_record(
            {
                "apiVersion": self.api_version,
                "kind": self.object_kind,
                "metadata": {"name": self.name, "namespace": self.namespace},
            },
            record,
        )
        self._object = self.api.create(self.collection_path, body, timeout=timeout)

    def update(self, record: LeaderRecord, timeout: float | None = None) -> None:
        """CAS-write ``record`` over the object last seen; 409 Conflict if it changed."""
        if self._object is None:
            raise ApiError(404, "NotFound", f"{self.describe()} not read yet")
        body = self._with_record(dict(self._object), record)
        try:
            self._object = self.api.replace(self.path, body, timeout=timeout)
        except ApiError as exc:
            if exc.code == 409:
                self._object = None  # stale: the next attempt must read first
            raise

    def watch(
        self, resource_version: str, *, timeout_s: int, read_timeout: float
    ) -> Iterator[tuple[str, LeaderRecord | None, str]]:
        """Yield (type, record, resourceVersion) for changes of the lock object.

        One watch request on the collection, narrowed by ``metadata.name`` (RBAC's
        resourceNames apply to it, as the API server maps the selector to the name).
        """
        response = self.api.open(
            "GET",
            self.collection_path,
            query={
                "watch": "true",
                "fieldSelector": f"metadata.name={self.name}",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": timeout_s,
            },
            timeout=_stream_timeout(read_timeout),
        )
        try:
            for line in watch_lines(response, chunk_size=4096):
                event = orjson.loads(line)
                kind = event.get("type", "")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    status = obj if isinstance(obj, dict) else {}
                    raise ApiError(
                        int(status.get("code") or 500),
                        str(status.get("reason") or ""),
                        str(status.get("message") or ""),
                        status,
                    )
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if kind == "BOOKMARK" or kind == "DELETED":
                    yield kind, None, rv
                else:
                    yield kind, self.record_of(obj), rv
        finally:
            response.release_conn()

    # -- per kind --------------------------------------------------------------------
    object_kind = "Endpoints"

    def record_of(self, obj: dict[str, Any]) -> LeaderRecord:
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        text = annotations.get(LEADER_ANNOTATION)
        if not text:
            return LeaderRecord()
        try:
            return LeaderRecord.from_annotation(text)
        except (ValueError, TypeError):
            # A garbled record is treated as "no leader": whoever writes next repairs it.
            return LeaderRecord()

    def _with_record(self, obj: dict[str, Any], record: LeaderRecord) -> dict[str, Any]:
        metadata = dict(obj.get("metadata") or {})
        annotations = dict(metadata.get("annotations") or {})
        annotations[LEADER_ANNOTATION] = record.to_annotation()
        metadata["annotations"] = annotations
        return {**obj, "metadata": metadata}


class ConfigMapLock(ResourceLock):
    kind = "configmap"
    object_kind = "ConfigMap"
    collection = "/api/v1/namespaces/{namespace}/configmaps"


class LeaseLock(ResourceLock):
    kind = "lease"
    object_kind = "Lease"
    api_version = "coordination.k8s.io/v1"
    collection = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    def record_of(self, obj: dict[str, Any]) -> LeaderRecord:
        try:
            return LeaderRecord.from_lease_spec(obj.get("spec") or {})
        except (ValueError, TypeError):
            return LeaderRecord()

    def _with_record(self, obj: dict[str, Any], record: LeaderRecord) -> dict[str, Any]:
        spec = {k: v for k, v in (obj.get("spec") or {}).items() if k != "holderIdentity"}
        spec.update(record.to_lease_spec())
        return {**obj, "spec": spec}


LOCK_KINDS: dict[str, type[ResourceLock]] = {
    "endpoints": ResourceLock,
    "configmap": ConfigMapLock,
    "lease": LeaseLock,
}


def make_lock(kind: str, api: KubeApi, *, namespace: str, name: str, identity: str) -> ResourceLock:
    try:
        cls = LOCK_KINDS[kind]
    except KeyError:
        expected = ", ".join(sorted(LOCK_KINDS))
        raise ValueError(f"unknown lock kind {kind!r}; expected one of {expected}") from None
    return cls(api, namespace=namespace, name=name, identity=identity)


def released(record: LeaderRecord, now: datetime) -> LeaderRecord:
    """The record a leader writes to hand over at once (client-go's release())."""
    return replace(
        record, holder_identity="", lease_duration_seconds=1, acquire_time=now, renew_time=now
    )


def _stream_timeout(read_timeout: float) -> urllib3.Timeout:
    return urllib3.Timeout(connect=min(read_timeout, 10.0), read=read_timeout)


def _rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339_micro(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
