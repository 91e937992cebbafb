"""Reading core/v1 Event dicts: the fields the Datadog formats and filters need, validated.

Raw JSON dicts as the API server sends them, old-style (``source``, ``count``,
``firstTimestamp``/``lastTimestamp``) or new-style (``eventTime``, ``series``,
``reportingComponent``, empty ``source``), read like ``kubectl`` does. Bad input raises
``MalformedEvent`` with a one-line message naming the field; nothing else is raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from workers.settings import EventTypeSelector

__all__ = ["MalformedEvent", "Occurrence", "is_collected", "last_seen"]

_EMPTY: Mapping[str, Any] = {}
_EVENT = itemgetter("involvedObject", "source", "type", "reason", "message", "firstTimestamp",
                    "lastTimestamp", "count")
_OBJECT = itemgetter("kind", "name", "uid")


class MalformedEvent(ValueError):
    """A Kubernetes event that cannot be transformed; ``str()`` is one line naming the field."""

    def __init__(self, problem: str, raw: object = None) -> None:
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        meta = meta if isinstance(meta, dict) else _EMPTY
        self.problem = problem
        self.name = f"{meta.get('namespace') or ''}/{meta.get('name') or '?'}"
        self.resource_version = str(meta.get("resourceVersion") or "")
        super().__init__(f"malformed event {self.name}: {problem}")


class Occurrence:
    """The fields of one Kubernetes event the formats and filters need, read once.

    Raises ``MalformedEvent``; times are epoch seconds (``first``/``last`` occurrence).
    """

    __slots__ = (
        "component", "count", "first", "host", "kind", "last", "message",
        "name", "namespace", "reason", "type", "uid",
    )  # fmt: skip

    def __init__(self, raw: object) -> None:
        # The common case in one go (C-level lookups, no method calls): an old-style event
        # whose fields are all there as strings and whose timestamps were parsed before.
        # Anything else (a miss, a None, a new-style event, bad input) reads carefully.
        try:
            obj, source, type_, reason, message, first_at, last_at, count = _EVENT(raw)
            kind, name, uid = _OBJECT(obj)
            namespace = obj.get("namespace") or ""
            component = source["component"]
            host = source.get("host") or ""
            first = _EPOCHS[first_at]
            last = first if last_at == first_at else _EPOCHS[last_at]
            "".join((kind, name, namespace, uid, type_, reason, message, component, host))
        except (KeyError, TypeError, AttributeError):
            self._read(raw)
            return
        if (not (kind and name and component and first and last and count)
                or type(count) is not int or "series" in raw):
            self._read(raw)
            return
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.uid = uid
        self.type = type_
        self.reason = reason
        self.message = message
        self.component = component
        self.host = name if kind == "Node" else host  # a Node's events happen on that node
        self.count = count
        self.first = first
        self.last = last

    def _read(self, raw: object) -> None:
        """Every field looked at on its own: defaults, conversions, one-line errors."""
        if type(raw) is not dict:
            raise MalformedEvent(f"not an object but {type(raw).__name__}", raw)
        get = raw.get
        obj = get("involvedObject")
        if type(obj) is not dict:
            raise MalformedEvent("involvedObject is missing", raw)
        source = get("source") or _EMPTY
        if type(source) is not dict:
            raise MalformedEvent("source is not an object", raw)
        strings = (
            obj.get("kind") or "", obj.get("name") or "", obj.get("namespace") or "",
            obj.get("uid") or "", get("type") or "", get("reason") or "", get("message") or "",
            source.get("component") or get("reportingComponent") or "", source.get("host") or "",
        )  # fmt: skip
        try:
            "".join(strings)  # all strings, as the API server sends them: one C-level check
        except TypeError:
            strings = tuple(map(str, strings))
        (self.kind, self.name, self.namespace, self.uid, self.type, self.reason,
         self.message, self.component, self.host) = strings  # fmt: skip
        if not self.kind or not self.name:
            missing = "kind" if not self.kind else "name"
            raise MalformedEvent(f"involvedObject.{missing} is empty", raw)
        if self.kind == "Node":  # a Node's events happen on that node
            self.host = self.name
        count = get("count")
        series = get("series")
        if series and type(series) is not dict:
            raise MalformedEvent("series is not an object", raw)
        if not count:
            count = (series and series.get("count")) or 1
        if type(count) is not int:
            raise MalformedEvent(f"count is not an integer: {count!r:.40}", raw)
        self.count = count
        first_at = get("firstTimestamp")
        last_at = get("lastTimestamp")
        first = _epoch(first_at, "firstTimestamp", raw)
        last = first if last_at == first_at else _epoch(last_at, "lastTimestamp", raw)
        if first is None or last is None:
            first, last = _new_style_times(raw, series, first, last)
        self.first = first
        self.last = last


def _new_style_times(
    raw: dict[str, Any], series: Any, first: float | None, last: float | None
) -> tuple[float, float]:
    """(first, last) occurrence of an event without both legacy timestamps."""
    event_time = _epoch(raw.get("eventTime"), "eventTime", raw)
    if last is None and series:
        last = _epoch(series.get("lastObservedTime"), "series.lastObservedTime", raw)
    first = first or event_time or last
    last = last or event_time or first
    if first is None or last is None:
        meta = raw.get("metadata")
        created = meta.get("creationTimestamp") if type(meta) is dict else None
        first = last = _epoch(created, "metadata.creationTimestamp", raw)
        if first is None or last is None:
            raise MalformedEvent("no timestamp (lastTimestamp, eventTime, ...)", raw)
    return first, last


_EPOCHS: dict[str, float] = {}


def _epoch(value: Any, key: str, raw: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 value, None if absent or zero; cached."""
    if not value:
        return None
    try:
        seconds = _EPOCHS.get(value)
    except TypeError:
        raise MalformedEvent(f"{key} is not a timestamp: {value!r:.40}", raw) from None
    if seconds is not None:
        return seconds or None
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise MalformedEvent(f"{key} is not a timestamp: {value!r:.40}", raw) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Go's zero time ("0001-01-01T00:00:00Z") means unset, as metav1.Time.IsZero() says.
    seconds = parsed.timestamp() if parsed.year > 1970 else 0.0
    if len(_EPOCHS) > 8192:  # events cluster around "now": a small cache hits nearly always
        _EPOCHS.clear()
    _EPOCHS[value] = seconds
    return seconds or None


def last_seen(raw: object) -> float:
    """When a Kubernetes event last occurred (epoch seconds); raises ``MalformedEvent``."""
    return Occurrence(raw).last


def is_collected(raw: object, selectors: Sequence[EventTypeSelector]) -> bool:
    """The ``collected_event_types`` filter: true if any selector matches (or there are none).

    As the Agent's ``shouldCollect``: a selector's empty kind/source/reasons match anything;
    ``source`` is compared with ``source.component`` (or ``reportingComponent`` for
    new-style events). A malformed event passes, so that ``transform`` reports it.
    """
    if not selectors or not isinstance(raw, dict):
        return True
    obj = raw.get("involvedObject")
    kind = obj.get("kind") if isinstance(obj, dict) else None
    source = raw.get("source")
    component = source.get("component") if isinstance(source, dict) else None
    component = component or raw.get("reportingComponent")
    reason = raw.get("reason")
    for sel in selectors:
        if sel.kind and sel.kind != kind:
            continue
        if sel.source and sel.source != component:
            continue
        if not sel.reasons or reason in sel.reasons:
            return True
    return False
