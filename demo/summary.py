"""Counting by marker: what was generated, delivered, duplicated and lost, and the verdict.

An occurrence is *delivered* if its marker reached the intake at least once, *lost* if it
never did, and *duplicated* once per extra delivery. A bundled Datadog event prints an
occurrence's line as ``<count> **<Reason>**: <message>`` with the counts of identical lines
of one flush added up, so a line whose count is twice the Event's is two deliveries.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from demo.generator import Generated
from demo.intake import Appearance

__all__ = ["HandOver", "Tally", "Timings", "render", "tally", "verdict"]


@dataclass(frozen=True, slots=True)
class Tally:
    generated: int
    repeats: int
    """Occurrences that were an earlier Event updated with ``count`` + 1."""
    delivered: int
    duplicated: int
    lost: int
    unexpected: int
    """Markers at the intake that the generator never saw accepted (an update that timed
    out on the client but was applied): shown, not counted."""
    lost_markers: tuple[str, ...]
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_max_s: float | None


@dataclass(frozen=True, slots=True)
class HandOver:
    signal: str
    old: str
    new: str
    """"" if no other replica took the lock."""
    lock_s: float | None
    """From the signal until another replica held the lock."""
    first_event_s: float | None
    """From the signal until the new leader's first event reached the intake."""


@dataclass(frozen=True, slots=True)
class Timings:
    first_event_s: float | None
    """From the command's start to the first counted event at the intake."""
    summary_s: float
    generate_s: float
    """How long the stream ran."""
    delivered_span_s: float | None
    """From the stream's start to the last first delivery."""


def tally(generated: Sequence[Generated], seen: Mapping[str, list[Appearance]]) -> Tally:
    delivered = duplicated = 0
    lost: list[str] = []
    latencies = []
    for occ in generated:
        appearances = seen.get(occ.marker)
        if not appearances:
            lost.append(occ.marker)
            continue
        delivered += 1
        times = sum(_deliveries(a, occ.count) for a in appearances)
        duplicated += times - 1
        latencies.append(min(a.at for a in appearances) - occ.at)
    known = {occ.marker for occ in generated}
    unexpected = sum(1 for marker in seen if marker not in known)
    return Tally(
        generated=len(generated), repeats=sum(1 for occ in generated if occ.count > 1),
        delivered=delivered, duplicated=duplicated, lost=len(lost),
        unexpected=unexpected, lost_markers=tuple(lost[:5]),
        latency_p50_s=statistics.median(latencies) if latencies else None,
        latency_p95_s=_p95(latencies), latency_max_s=max(latencies) if latencies else None,
    )


def _deliveries(appearance: Appearance, count: int) -> int:
    if appearance.count is None or count <= 0:
        return 1
    return max(1, round(appearance.count / count))


def _p95(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def verdict(t: Tally, hand_over: HandOver | None, *, crash: bool) -> tuple[bool, str]:
    """(passed, reason): nothing lost, nothing duplicated unless the leader was killed."""
    if t.generated == 0:
        return False, "no event was generated"
    if t.lost:
        return False, (f"{t.lost} of {t.generated} events never reached the intake "
                       f"(e.g. {', '.join(t.lost_markers)})")
    if t.duplicated and not crash:
        return False, f"{t.duplicated} events were delivered more than once"
    if hand_over is not None and not hand_over.new:
        return False, f"no replica took over after {hand_over.signal} to {hand_over.old}"
    if crash and t.duplicated:
        return True, (f"nothing lost; {t.duplicated} events re-sent after the SIGKILL (the "
                      "batch delivered after the last checkpoint: at-least-once on a crash)")
    return True, "every event delivered exactly once"


def render(t: Tally, hand_over: HandOver | None, transitions: int, leaders: Sequence[str],
           timings: Timings, passed: bool, reason: str) -> str:
    """The summary block; the ``name: value`` lines are stable for scripts to parse."""
    rate_gen = t.generated / timings.generate_s if timings.generate_s > 0 else 0.0
    span = timings.delivered_span_s
    rate_del = t.delivered / span if span else 0.0
    lines = [
        "",
        "summary",
        f"  events generated:      {t.generated}",
        f"  of which repeats:      {t.repeats} (the same Event again, count + 1)",
        f"  events delivered:      {t.delivered}",
        f"  duplicated:            {t.duplicated}",
        f"  lost:                  {t.lost}",
    ]
    if t.unexpected:
        lines.append(f"  unexpected markers:    {t.unexpected}")
    if hand_over is not None:
        lock = _secs(hand_over.lock_s)
        first = _secs(hand_over.first_event_s)
        lines.append(f"  hand-over:             {hand_over.signal} to {hand_over.old} -> "
                     f"{hand_over.new or 'nobody'} leads; lock taken after {lock}, "
                     f"first event at the intake after {first}")
    lines += [
        f"  leader transitions:    {transitions} (leaders: {' -> '.join(leaders) or '-'})",
        f"  delivery latency:      p50 {_secs(t.latency_p50_s)}, p95 {_secs(t.latency_p95_s)}, "
        f"max {_secs(t.latency_max_s)}",
        f"  throughput:            generated {rate_gen:.1f} events/s, delivered "
        f"{rate_del:.1f} events/s",
        f"  timing:                first event at the intake {_secs(timings.first_event_s)} "
        f"after start; summary at {_secs(timings.summary_s)}",
        f"  result:                {'PASS' if passed else 'FAIL'}: {reason}",
    ]
    return "\n".join(lines)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"
