"""Kubernetes core/v1 Events (raw JSON dicts) -> Datadog events (v1 intake dicts), Agent 6 style.

Mirrors the Datadog Agent's kubernetes_apiserver check (``kubernetes_eventbundle.go``,
``bundled_events.go``, ``unbundled_events.go``, ``events_common.go``):

- bundled (default): one Datadog event per involved object (kind, uid, type) per call,
  title ``Events from the <Kind> <ns>/<name>``, ``%%%`` markdown text with one line
  ``<count> **<Reason>**: <Message>`` per distinct reason and message, then the emitting
  component and the time range; ``~`` escaped so markdown does not strike text out.
- unbundled: one Datadog event per Kubernetes event, title ``<Kind> <ns>/<name>: <Reason>``,
  the message as text, plus an ``event_reason`` tag.

Deliberate differences from the Agent (each to lose nothing):
- Text over 4000 characters is split into several complete Datadog events with the same
  title, tags and aggregation key (the Agent refuses lines that would overflow); a single
  message longer than that is cut at whitespace into ``[part i/n]`` pieces.
- Events with an empty reason or message are kept (the Agent skips them); an event without
  ``involvedObject`` kind or name is reported as ``MalformedEvent`` instead of skipped.
- New-style events (``eventTime``, ``series``, ``reportingComponent``, empty ``source``) are
  read like ``kubectl`` does; the bundle's time range is the earliest first to the latest
  last occurrence; all distinct emitting components are named.
- No tagger: no pod labels/annotations tags, no ``host_provider_id``, no ``-<cluster>``
  host suffix. An event without a node gets ``hostname`` (the Agent's aggregator does too).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.occurrence import MalformedEvent, Occurrence, is_collected, last_seen

__all__ = [
    "EVENT_TYPE",
    "MAX_TEXT_CHARS",
    "SOURCE_TYPE_NAME",
    "MalformedEvent",
    "Occurrence",
    "Transformed",
    "is_collected",
    "last_seen",
    "transform",
]

MAX_TEXT_CHARS = 4000
"""The events API limit on ``msg_text`` (docs.datadoghq.com/api/latest/events)."""
SOURCE_TYPE_NAME = "kubernetes"
EVENT_TYPE = "kubernetes_apiserver"
"""The Agent check's name, used as event_type and aggregation_key prefix."""

_ALERT_TYPES = {"Normal": "info", "Warning": "warning"}
# comp/core/tagger/kubetags: the per-kind tag the Agent adds (kube_<kind>:<name>).
_KIND_TAGS = {
    "Pod": "pod_name",
    "Deployment": "kube_deployment",
    "ReplicaSet": "kube_replica_set",
    "ReplicationController": "kube_replication_controller",
    "StatefulSet": "kube_stateful_set",
    "DaemonSet": "kube_daemon_set",
    "Job": "kube_job",
    "CronJob": "kube_cronjob",
    "Service": "kube_service",
    "Namespace": "kube_namespace",
}
_HEAD = "%%% \n"
_PART = "[part {}/{}] "
_PART_WIDTH = len(_PART.format(9999, 9999))


@dataclass(frozen=True, slots=True)
class Transformed:
    """Datadog events ready for the intake, and the Kubernetes events that were rejected."""

    events: list[dict[str, Any]] = field(default_factory=list)
    malformed: list[MalformedEvent] = field(default_factory=list)


def transform(
    raws: Iterable[object],
    *,
    unbundle: bool = False,
    tags: Sequence[str] = (),
    hostname: str = "",
) -> Transformed:
    """Datadog events for a flush of Kubernetes events (bundled unless ``unbundle``).

    ``tags`` are the global tags added to every event; ``hostname`` is the host of events
    that name no node. Never raises for bad input: those events are in ``malformed``.
    """
    out = Transformed()
    tags = tuple(tags)
    occurrences: list[Occurrence] = []
    for raw in raws:
        try:
            occurrences.append(Occurrence(raw))
        except MalformedEvent as exc:
            out.malformed.append(exc)
    if unbundle:
        for occ in occurrences:
            _unbundled(occ, tags, hostname, out.events)
        return out
    bundles: dict[tuple[str, str, str, str], _Bundle] = {}
    for occ in occurrences:
        # The Agent's bundleID (kind, uid, type); an object without uid is told by its name.
        key = (occ.kind, occ.uid, occ.type, "" if occ.uid else f"{occ.namespace}/{occ.name}")
        bundle = bundles.get(key)
        if bundle is None:
            bundles[key] = bundle = _Bundle(occ)
        bundle.add(occ)
    for bundle in bundles.values():
        bundle.emit(tags, hostname, out.events)
    return out


def _readable(occ: Occurrence) -> str:
    if occ.namespace:
        return f"{occ.kind} {occ.namespace}/{occ.name}"
    return f"{occ.kind} {occ.name}"


_TAGS: dict[tuple[Any, ...], list[str]] = {}


def _tags(
    occ: Occurrence, components: tuple[str, ...], reason: str | None, global_tags: tuple[str, ...]
) -> list[str]:
    """Tags of a bundle (``reason`` None) or of an unbundled event; memoised per object."""
    key = (occ.kind, occ.name, occ.namespace, components, reason, global_tags)
    tags = _TAGS.get(key)
    if tags is None:
        # The Agent's getInvolvedObjectTags, deprecated names included (Agent 6 dashboards).
        tags = [
            f"kube_kind:{occ.kind}",
            f"kube_name:{occ.name}",
            f"kubernetes_kind:{occ.kind}",
            f"name:{occ.name}",
        ]
        if occ.namespace:
            tags += [f"kube_namespace:{occ.namespace}", f"namespace:{occ.namespace}"]
        kind_tag = _KIND_TAGS.get(occ.kind)
        if kind_tag:
            tags.append(f"{kind_tag}:{occ.name}")
        tags += [f"source_component:{c}" for c in components]
        tags.append("orchestrator:kubernetes")
        if reason is None:
            tags += [t for t in global_tags if t not in tags]
        else:
            tags.append(f"event_reason:{reason}")
            tags = sorted(set(tags).union(global_tags))  # the Agent's SortUniq
        if len(_TAGS) > 16384:
            _TAGS.clear()
        _TAGS[key] = tags
    return list(tags)  # a copy: the caller owns its events


def _aggregation_key(occ: Occurrence) -> str:
    return f"{EVENT_TYPE}:{occ.uid or f'{occ.kind}/{occ.namespace}/{occ.name}'}"


def _datadog_event(
    occ: Occurrence, title: str, text: str, ts: float, host: str, tags: list[str]
) -> dict[str, Any]:
    # Field order and names of the Agent's serializer (pkg/serializer/.../events.go).
    return {
        "msg_title": title,
        "msg_text": text,
        "timestamp": int(ts),
        "priority": "normal",
        "host": host,
        "tags": tags,
        "alert_type": _ALERT_TYPES.get(occ.type, "info"),
        "aggregation_key": _aggregation_key(occ),
        "source_type_name": SOURCE_TYPE_NAME,
        "event_type": EVENT_TYPE,
    }


def _unbundled(
    occ: Occurrence, global_tags: tuple[str, ...], hostname: str, out: list[dict[str, Any]]
) -> None:
    tags = _tags(occ, (occ.component,), occ.reason, global_tags)
    title = f"{_readable(occ)}: {occ.reason}"
    host = occ.host or hostname
    if len(occ.message) <= MAX_TEXT_CHARS:
        out.append(_datadog_event(occ, title, occ.message, occ.last, host, tags))
        return
    pieces = _cut(occ.message, MAX_TEXT_CHARS - _PART_WIDTH)
    for i, piece in enumerate(pieces, 1):
        text = _PART.format(i, len(pieces)) + piece
        out.append(_datadog_event(occ, title, text, occ.last, host, tags))


class _Bundle:
    """One involved object's events within a flush (the Agent's kubernetesEventBundle)."""

    __slots__ = ("components", "counts", "first", "last", "occ")

    def __init__(self, occ: Occurrence) -> None:
        self.occ = occ
        self.counts: dict[tuple[str, str], int] = {}
        self.components: dict[str, None] = {}
        self.first = occ.first
        self.last = occ.last

    def add(self, occ: Occurrence) -> None:
        key = (occ.reason, occ.message)
        self.counts[key] = self.counts.get(key, 0) + occ.count
        self.components[occ.component] = None
        if occ.first < self.first:
            self.first = occ.first
        if occ.last > self.last:
            self.last = occ.last

    def emit(
        self, global_tags: tuple[str, ...], hostname: str, out: list[dict[str, Any]]
    ) -> None:
        occ = self.occ
        components = tuple(self.components)
        if "" in components:
            components = tuple(filter(None, components)) or ("",)
        emitters = ", ".join(components[:3])
        if len(components) > 3:  # keep the footer small whatever the text budget
            emitters += f" and {len(components) - 3} more"
        foot = (
            f" \n _Events emitted by the {emitters} seen at {_go_time(self.last)}"
            f" since {_go_time(self.first)}_ \n\n %%%"
        ).replace("~", "\\~")
        budget = MAX_TEXT_CHARS - len(_HEAD) - len(foot)
        counts = self.counts
        if len(counts) == 1:
            ((reason, message), count), = counts.items()
            line = f"{count} **{reason}**: {message}\n".replace("~", "\\~")
            chunks = [[line]] if len(line) <= budget else _pack(self._lines(budget), budget)
        else:
            chunks = _pack(self._lines(budget), budget)
        title = f"Events from the {_readable(occ)}"
        host = occ.host or hostname
        tags = _tags(occ, components, None, global_tags)
        for chunk in chunks:
            text = _HEAD + " ".join(chunk) + foot
            out.append(_datadog_event(occ, title, text, self.last, host, tags))
            tags = list(tags)  # each Datadog event owns its list

    def _lines(self, budget: int) -> list[str]:
        """The text lines, sorted like the Agent's formatStringIntMap, long ones cut up."""
        lines: list[str] = []
        for (reason, message), count in sorted(self.counts.items()):
            line = f"{count} **{reason}**: {message}\n".replace("~", "\\~")
            if len(line) <= budget:
                lines.append(line)
                continue
            prefix = f"{count} **{reason}**: ".replace("~", "\\~")
            body = message.replace("~", "\\~")
            pieces = _cut(body, budget - len(prefix) - _PART_WIDTH - 1)
            lines += [f"{prefix}{_PART.format(i, len(pieces))}{p}\n" for i, p in
                      enumerate(pieces, 1)]  # fmt: skip
        return lines


def _pack(lines: list[str], budget: int) -> list[list[str]]:
    """Group lines (joined by one space) into chunks of at most ``budget`` characters."""
    if sum(map(len, lines)) + len(lines) - 1 <= budget:
        return [lines]
    chunks: list[list[str]] = [[]]
    size = -1
    for line in lines:
        if chunks[-1] and size + 1 + len(line) > budget:
            chunks.append([])
            size = -1
        chunks[-1].append(line)
        size += 1 + len(line)
    return chunks


def _cut(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` chars, at whitespace when possible.

    Never between an escaping backslash and its ``~``, so every piece renders as written.
    """
    limit = max(limit, 16)
    pieces = []
    start = 0
    while len(text) - start > limit:
        end = start + limit
        half = start + limit // 2
        space = max(text.rfind(" ", half, end), text.rfind("\n", half, end))
        if space > start:
            end = space + 1
        elif text[end - 1] == "\\" and text[end] == "~":
            end -= 1
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


_GO_TIMES: dict[int, str] = {}


def _go_time(ts: float) -> str:
    """Go's ``time.Unix(ts, 0).String()`` in UTC, as the Agent prints the bundle's range."""
    seconds = int(ts)
    text = _GO_TIMES.get(seconds)
    if text is None:
        text = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(seconds))
        if len(_GO_TIMES) > 8192:
            _GO_TIMES.clear()
        _GO_TIMES[seconds] = text
    return text
