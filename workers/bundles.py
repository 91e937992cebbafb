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
    "datadog_events",
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
    occurrences: list[Occurrence] = []
    for raw in raws:
        try:
            occurrences.append(Occurrence(raw))
        except MalformedEvent as exc:
            out.malformed.append(exc)
    out.events.extend(datadog_events(occurrences, unbundle=unbundle, tags=tags,
                                     hostname=hostname))
    return out


def datadog_events(
    occurrences: Iterable[Occurrence],
    *,
    unbundle: bool = False,
    tags: Sequence[str] = (),
    hostname: str = "",
) -> list[dict[str, Any]]:
    """``transform`` for occurrences already read (the events worker's hot path)."""
    out: list[dict[str, Any]] = []
    tags = tuple(tags)
    if unbundle:
        for occ in occurrences:
            _unbundled(occ, tags, hostname, out)
        return out
    # The Agent's bundleID (kind, uid, type); an object without uid is told by its name.
    # An object with one occurrence in the flush (a steady stream's usual case) skips the
    # _Bundle machinery.
    bundles: dict[tuple[str, ...], Occurrence | list[Occurrence]] = {}
    get = bundles.get
    for occ in occurrences:
        uid = occ.uid
        key = (occ.kind, uid, occ.type) if uid else (occ.kind, "", occ.type, occ.name,
                                                     occ.namespace)
        seen = get(key)
        if seen is None:
            bundles[key] = occ
        elif type(seen) is list:
            seen.append(occ)
        else:
            bundles[key] = [seen, occ]
    for bundle in bundles.values():
        if type(bundle) is list or not _single(bundle, tags, hostname, out):
            _Bundle(bundle if type(bundle) is list else [bundle]).emit(tags, hostname, out)
    return out


def _single(occ: Occurrence, global_tags: tuple[str, ...], hostname: str,
            out: list[dict[str, Any]]) -> bool:
    """The bundle of an object with one occurrence in the flush, if its text fits (True):
    what ``_Bundle.emit`` makes of it, in fewer steps."""
    last = occ.last
    seen_at = _GO_TIMES.get(last) or _go_time(last)
    since = seen_at if occ.first == last else (_GO_TIMES.get(occ.first) or _go_time(occ.first))
    text = (
        f"%%% \n{occ.count} **{occ.reason}**: {occ.message}\n \n _Events emitted by the "
        f"{occ.component} seen at {seen_at} since {since}_ \n\n %%%"
    )
    if "~" in text:
        text = text.replace("~", "\\~")
    if len(text) > MAX_TEXT_CHARS:
        return False
    out.append(_bundle_event(occ, text, last, (occ.component,), global_tags, hostname))
    return True


def _bundle_event(
    occ: Occurrence,
    text: str,
    last: float,
    components: tuple[str, ...],
    global_tags: tuple[str, ...],
    hostname: str,
) -> dict[str, Any]:
    """The Datadog event of a bundle about ``occ``'s object."""
    tags = _object_tags(occ)
    if len(components) == 1:
        tags.append(f"source_component:{components[0]}")
    else:
        tags += [f"source_component:{c}" for c in components]
    tags.append("orchestrator:kubernetes")
    if global_tags:
        tags += [t for t in global_tags if t not in tags]
    return _datadog_event(occ, f"Events from the {_readable(occ)}", text, last,
                          occ.host or hostname, tags)


def _readable(occ: Occurrence) -> str:
    if occ.namespace:
        return f"{occ.kind} {occ.namespace}/{occ.name}"
    return f"{occ.kind} {occ.name}"


def _object_tags(occ: Occurrence) -> list[str]:
    """The Agent's getInvolvedObjectTags, deprecated names included (Agent 6 dashboards).

    Built for every Datadog event rather than memoised: a cache of them cost megabytes
    per few thousand objects and saved less than a microsecond an event.
    """
    kind, name, namespace = occ.kind, occ.name, occ.namespace
    if namespace:
        tags = [f"kube_kind:{kind}", f"kube_name:{name}", f"kubernetes_kind:{kind}",
                f"name:{name}", f"kube_namespace:{namespace}", f"namespace:{namespace}"]
    else:
        tags = [f"kube_kind:{kind}", f"kube_name:{name}", f"kubernetes_kind:{kind}",
                f"name:{name}"]
    kind_tag = _KIND_TAGS.get(kind)
    if kind_tag:
        tags.append(f"{kind_tag}:{name}")
    return tags


def _datadog_event(
    occ: Occurrence, title: str, text: str, ts: float, host: str, tags: list[str]
) -> dict[str, Any]:
    # Field order and names of the Agent's serializer (pkg/serializer/.../events.go).
    uid = occ.uid
    return {
        "msg_title": title,
        "msg_text": text,
        "timestamp": int(ts),
        "priority": "normal",
        "host": host,
        "tags": tags,
        "alert_type": _ALERT_TYPES.get(occ.type, "info"),
        "aggregation_key": f"{EVENT_TYPE}:{uid or f'{occ.kind}/{occ.namespace}/{occ.name}'}",
        "source_type_name": SOURCE_TYPE_NAME,
        "event_type": EVENT_TYPE,
    }


def _unbundled(
    occ: Occurrence, global_tags: tuple[str, ...], hostname: str, out: list[dict[str, Any]]
) -> None:
    tags = _object_tags(occ)
    tags += [f"source_component:{occ.component}", "orchestrator:kubernetes",
             f"event_reason:{occ.reason}"]
    tags = sorted(set(tags).union(global_tags))  # the Agent's SortUniq
    title = f"{_readable(occ)}: {occ.reason}"
    host = occ.host or hostname
    if len(occ.message) <= MAX_TEXT_CHARS:
        out.append(_datadog_event(occ, title, occ.message, occ.last, host, tags))
        return
    pieces = _cut(occ.message, MAX_TEXT_CHARS - _PART_WIDTH)
    for i, piece in enumerate(pieces, 1):
        text = _PART.format(i, len(pieces)) + piece
        out.append(_datadog_event(occ, title, text, occ.last, host, list(tags)))


class _Bundle:
    """One involved object's events within a flush (the Agent's kubernetesEventBundle)."""

    __slots__ = ("components", "counts", "first", "last", "occ")

    def __init__(self, occurrences: list[Occurrence]) -> None:
        self.occ = occ = occurrences[0]
        counts: dict[tuple[str, str], int] = {}
        components: dict[str, None] = {}
        first, last = occ.first, occ.last
        for occ in occurrences:
            key = (occ.reason, occ.message)
            counts[key] = counts.get(key, 0) + occ.count
            components[occ.component] = None
            if occ.first < first:
                first = occ.first
            if occ.last > last:
                last = occ.last
        self.counts = counts
        self.components = components
        self.first = first
        self.last = last

    def emit(
        self, global_tags: tuple[str, ...], hostname: str, out: list[dict[str, Any]]
    ) -> None:
        components = tuple(self.components)
        if "" in components:
            components = tuple(filter(None, components)) or ("",)
        if len(components) == 1:
            emitters = components[0]
        else:
            emitters = ", ".join(components[:3])
            if len(components) > 3:  # keep the footer small whatever the text budget
                emitters += f" and {len(components) - 3} more"
        first, last = self.first, self.last
        seen_at = _GO_TIMES.get(last) or _go_time(last)
        since = seen_at if first == last else (_GO_TIMES.get(first) or _go_time(first))
        foot = f" \n _Events emitted by the {emitters} seen at {seen_at} since {since}_ \n\n %%%"
        # Lines sorted like the Agent's formatStringIntMap; escaping "~" is the same done
        # to the whole text or to each piece, so the usual bundle is one join and one check.
        text = _HEAD + " ".join([f"{count} **{reason}**: {message}\n"
                                 for (reason, message), count in sorted(self.counts.items())])
        text += foot
        if "~" in text:
            text = text.replace("~", "\\~")
        event = _bundle_event(self.occ, text, last, components, global_tags, hostname)
        if len(text) <= MAX_TEXT_CHARS:
            out.append(event)
            return
        foot = foot.replace("~", "\\~")
        budget = MAX_TEXT_CHARS - len(_HEAD) - len(foot)
        for chunk in _pack(self._lines(budget), budget):
            # Each a complete Datadog event of its own (same title, tags, key), own tag list.
            out.append({**event, "msg_text": _HEAD + " ".join(chunk) + foot,
                        "tags": list(event["tags"])})

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


_GO_TIMES: dict[float, str] = {}
_GO_TIMES_MAX = 4096
"""Distinct event times remembered: about an hour of one-second timestamps (~0.5 MB)."""


def _go_time(ts: float) -> str:
    """Go's ``time.Unix(ts, 0).String()`` in UTC, as the Agent prints the bundle's range."""
    text = _GO_TIMES.get(ts)
    if text is None:
        text = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(int(ts)))
        if len(_GO_TIMES) >= _GO_TIMES_MAX:
            _GO_TIMES.clear()
        _GO_TIMES[ts] = text
    return text
