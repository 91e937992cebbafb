"""The event token checkpoint: the only writer of ConfigMap ``datadogtoken``.

Workers report acknowledged progress over their pipes; this keeps the newest token in memory
(a restarted worker resumes from it) and persists it, at most every ``interval_s`` and on
hand-over, with compare-and-swap on the ConfigMap's resourceVersion. The keys are the Datadog
Cluster Agent's, so either agent can take over from the other: ``event.tokenKey`` (the
resourceVersion) and ``event.tokenTimestamp`` (RFC 3339).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from workers.kubeapi import ApiError, KubeApi
from workers.protocol import Token

__all__ = ["TOKEN_CONFIGMAP", "Checkpointer", "parse_token"]

TOKEN_CONFIGMAP = "datadogtoken"
TOKEN_KEY = "event.tokenKey"
TIMESTAMP_KEY = "event.tokenTimestamp"


def parse_token(data: dict[str, Any] | None) -> Token | None:
    """The token in a ConfigMap's data; None if absent, "0" (the seed's value) or malformed."""
    data = data or {}
    key = str(data.get(TOKEN_KEY) or "").strip()
    if not key or key == "0":
        return None
    if not key.isdigit():
        logger.warning("ignoring malformed {} {!r} in ConfigMap {}", TOKEN_KEY, key[:40],
                       TOKEN_CONFIGMAP)
        return None
    stamp = str(data.get(TIMESTAMP_KEY) or "").strip()
    timestamp = None
    if stamp:
        try:
            timestamp = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            if timestamp.tzinfo is None:
                timestamp = timestamp.replace(tzinfo=UTC)
        except ValueError:
            logger.warning("ignoring malformed {} {!r}", TIMESTAMP_KEY, stamp[:40])
    return Token(key, timestamp)


def format_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Checkpointer:
    """Newest acknowledged token in memory; persisted while ``may_write()`` says we lead."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        interval_s: float = 5.0,
        may_write: Callable[[], bool],
        name: str = TOKEN_CONFIGMAP,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.interval_s = interval_s
        self._may_write = may_write
        self._mutex = threading.Lock()
        self._token: Token | None = None
        self._persisted: Token | None = None
        self.writes = 0
        self.conflicts = 0
        self.failures = 0
        self.last_ok: bool | None = None
        """Result of the last write attempt (None: none yet)."""
        self._object: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps/{self.name}"

    @property
    def token(self) -> Token | None:
        with self._mutex:
            return self._token

    @property
    def persisted(self) -> Token | None:
        with self._mutex:
            return self._persisted

    def load(self) -> Token | None:
        """Read the persisted token (a new leader's starting point). Raises ApiError on failure
        other than 404, so the caller does not start from nothing by mistake."""
        try:
            obj = self.api.get(self.path)
        except ApiError as exc:
            if exc.code != 404:
                raise
            logger.info("ConfigMap {}/{} not found: starting without a token",
                        self.namespace, self.name)
            obj = {}
        stored = parse_token(obj.get("data"))
        self._object = obj or None
        with self._mutex:
            # A leader winning again after fencing may know more than the ConfigMap: what
            # it holds was acknowledged, so resuming from the newer of the two loses nothing
            # and replays nothing.
            token = self._token if self._token and self._token.is_newer_than(stored) else stored
            self._token = token
            self._persisted = stored
        logger.info("resuming from token {}", _describe(token))
        return token

    def advance(self, token: Token) -> bool:
        """Record acknowledged progress; ignored unless it moves forward (never backwards)."""
        with self._mutex:
            if not token.is_newer_than(self._token):
                return False
            self._token = token
            return True

    def flush(self) -> bool:
        """Write the in-memory token if it is newer than what was persisted; True if in sync."""
        with self._mutex:
            token, persisted = self._token, self._persisted
        if token is None or not token.is_newer_than(persisted):
            return True
        for _attempt in range(3):
            if not self._may_write():
                logger.debug("not leading: token {} left unpersisted", _describe(token))
                return False
            try:
                self._write(token)
            except ApiError as exc:
                if exc.code == 409:
                    self.conflicts += 1
                    continue
                self.failures += 1
                self.last_ok = False
                logger.warning("could not persist token {}: {}", _describe(token), exc)
                return False
            except _Stale as exc:
                logger.warning("not writing token {}: {}", _describe(token), exc)
                return False
            with self._mutex:
                if token.is_newer_than(self._persisted):
                    self._persisted = token
            self.writes += 1
            self.last_ok = True
            logger.debug("checkpointed token {}", _describe(token))
            return True
        self.failures += 1
        self.last_ok = False
        logger.warning("could not persist token {}: repeated conflicts", _describe(token))
        return False

    def _write(self, token: Token) -> None:
        data = {TOKEN_KEY: token.resource_version}
        if token.timestamp is not None:
            data[TIMESTAMP_KEY] = format_timestamp(token.timestamp)
        current = self._object
        if current is None:
            # Re-read only when we have no fresh copy: the CAS below catches any other writer.
            try:
                current = self.api.get(self.path)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                body = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "data": data,
                }
                self._object = self.api.create(
                    f"/api/v1/namespaces/{self.namespace}/configmaps", body
                )
                return
            stored = parse_token(current.get("data"))
            if stored is not None and stored.is_newer_than(token):
                # Someone (a leader we did not know had taken over) got further: going
                # back would replay events, so leave it.
                raise _Stale(f"ConfigMap already holds newer token {stored.resource_version}")
        body = {**current, "data": {**(current.get("data") or {}), **data}}
        try:
            self._object = self.api.replace(self.path, body)
        except ApiError:
            self._object = None
            raise


class _Stale(Exception):
    pass


def _describe(token: Token | None) -> str:
    if token is None:
        return "(none)"
    if token.timestamp is None:
        return token.resource_version
    return f"{token.resource_version} @ {format_timestamp(token.timestamp)}"
