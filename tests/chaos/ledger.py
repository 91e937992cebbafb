"""What was written to the cluster versus what the intake acknowledged, per occurrence.

Every occurrence the stream writes is registered with its resourceVersion; ``refresh()``
reads the intake's new 2xx ``/intake/`` payloads and records, for every marker ``ck<id>-<n>``
found in a Datadog event's text, when it arrived and which replica sent it (the payload's
``internalHostname``, one per replica). From that:

- lost: written, never acknowledged;
- extra copies: every acknowledgement of an occurrence after its first (duplicates);
- phantoms: markers acknowledged that were never written (a corrupted payload);
- the commit-point check: an occurrence at or below a persisted token's resourceVersion
  that the intake had not acknowledged when the token was read (the token must only ever
  advance to acknowledged events).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field

from intake_server import LocalIntake

__all__ = ["Copy", "Ledger", "Occurrence"]

MARKER = re.compile(r"\bck(\d+)-(\d+)\b")
RELOAD_TAG = "chaos_reload:"

Key = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Copy:
    at: float
    """``time.monotonic()`` when the intake received the payload."""
    sender: str


@dataclass(slots=True)
class Occurrence:
    eid: int
    count: int
    rv: int
    written_at: float
    copies: list[Copy] = field(default_factory=list)

    @property
    def key(self) -> Key:
        return (self.eid, self.count)


class Ledger:
    """Thread-safe; the stream writes, the watchers and the test read."""

    def __init__(self, intake: LocalIntake) -> None:
        self.intake = intake
        self._lock = threading.Lock()
        self._occ: dict[Key, Occurrence] = {}
        self._order: list[Occurrence] = []
        """In write order, which is resourceVersion order (one producer thread)."""
        self._latest: dict[int, int] = {}
        self._repeatable: dict[Key, None] = {}
        self._scanned = 0
        self._verified = 0
        """Index in ``_order`` up to which the commit-point check passed."""
        self.phantoms: Counter[Key] = Counter()
        self.commit_violations: list[dict[str, object]] = []
        self.payloads = 0
        self.datadog_events = 0
        self.reload_tags: dict[str, float] = {}
        """``chaos_reload:<n>`` tag value -> when it first arrived at the intake."""
        self.senders: Counter[str] = Counter()

    # -- writing side ------------------------------------------------------------------------

    def written(self, eid: int, count: int, rv: int, at: float) -> None:
        occ = Occurrence(eid, count, rv, at)
        with self._lock:
            self._occ[occ.key] = occ
            self._order.append(occ)
            self._latest[eid] = count
            self._repeatable.pop((eid, count - 1), None)

    def repeatable(self, max_count: int) -> list[Key]:
        """Latest occurrences already acknowledged, below ``max_count``."""
        with self._lock:
            return [k for k in self._repeatable if k[1] < max_count]

    # -- intake side ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Account for the payloads the intake acknowledged since the last call."""
        with self._lock:
            new = self.intake.requests("/intake/")[self._scanned:]
            self._scanned += len(new)
            for request in new:
                if not 200 <= request.status < 300 or not isinstance(request.body, dict):
                    continue
                self.payloads += 1
                sender = str(request.body.get("internalHostname", ""))
                self.senders[sender] += 1
                for group in (request.body.get("events") or {}).values():
                    for event in group:
                        self._take(event, Copy(request.at, sender))

    def _take(self, event: dict[str, object], copy: Copy) -> None:
        self.datadog_events += 1
        for tag in event.get("tags") or ():  # type: ignore[attr-defined]
            if isinstance(tag, str) and tag.startswith(RELOAD_TAG):
                self.reload_tags.setdefault(tag[len(RELOAD_TAG):], copy.at)
        for eid, count in MARKER.findall(str(event.get("msg_text", ""))):
            key = (int(eid), int(count))
            occ = self._occ.get(key)
            if occ is None:
                self.phantoms[key] += 1
                continue
            occ.copies.append(copy)
            if len(occ.copies) == 1 and self._latest.get(key[0]) == key[1]:
                self._repeatable[key] = None

    # -- questions -----------------------------------------------------------------------------

    def acked(self, key: Key) -> bool:
        with self._lock:
            occ = self._occ.get(key)
            return bool(occ and occ.copies)

    def newest_written(self) -> Occurrence | None:
        with self._lock:
            return self._order[-1] if self._order else None

    def counts(self) -> tuple[int, int]:
        """(occurrences written, occurrences acknowledged at least once)."""
        with self._lock:
            return len(self._order), sum(1 for o in self._order if o.copies)

    def check_commit(self, token_rv: int, read_at: float) -> None:
        """Every occurrence at or below ``token_rv`` must have been acknowledged already.

        Call ``refresh()`` *after* reading the token: what the intake had acknowledged when
        the token was read is then all accounted for, so a miss here is a real violation.
        """
        with self._lock:
            order, i = self._order, self._verified
            while i < len(order) and order[i].rv <= token_rv:
                occ = order[i]
                if not occ.copies:
                    self.commit_violations.append({
                        "occurrence": f"ck{occ.eid}-{occ.count}", "rv": occ.rv,
                        "token": token_rv, "token_read_at": round(read_at, 3),
                    })
                i += 1
            self._verified = i

    def lost(self) -> list[Occurrence]:
        with self._lock:
            return [o for o in self._order if not o.copies]

    def extra_copies(self) -> list[tuple[Occurrence, Copy]]:
        """Every acknowledgement after the first of an occurrence, in arrival order."""
        with self._lock:
            extra = [(o, c) for o in self._order for c in o.copies[1:]]
        return sorted(extra, key=lambda oc: oc[1].at)

    def first_acked_between(self, t0: float, t1: float) -> int:
        """Occurrences whose first acknowledgement arrived in [t0, t1]."""
        with self._lock:
            return sum(1 for o in self._order if o.copies and t0 <= o.copies[0].at <= t1)
