"""Which occurrences of which Kubernetes events were already taken: (uid, count) once.

A repeated event is the same Event object (same uid) written again with a higher
``count``; a write that leaves the count alone (or a re-list that shows the object again)
is no new occurrence. ``SeenOccurrences`` remembers the highest count taken per uid, in
bounded memory: two generations of plain dicts keyed by 60 bits of the uid's hash (such
an int takes 32 bytes, a uid string 85; a collision among 10^5 live uids is a 10^-8
chance).
A generation is retired when it is older than ``horizon_s`` (a bit more than the API
server's 1 h event TTL: older objects are gone anyway) or holds ``capacity / 2`` uids, so
a uid is remembered at least that long after it was last taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_HORIZON_S", "SeenOccurrences"]

DEFAULT_HORIZON_S = 3900.0
"""The 1 h ``--event-ttl`` of kube-apiserver, plus margin."""
DEFAULT_CAPACITY = 43_690
"""uids remembered at most: two generations of 21,845, the most a dict holds before its
table doubles from 2^15 to 2^16 slots, so about 62 B a uid, 2.7 MB in all (an hour of 12
events/s). A busier cluster remembers a shorter while; re-lists then rely on
resourceVersions alone, which are exact within one etcd."""
_KEY_MASK = (1 << 60) - 1
"""Keys below 2^60 are 32-byte ints; a full 64-bit hash takes 48 (pymalloc rounds up)."""


class SeenOccurrences:
    """uid -> highest count taken, for about ``horizon_s``; not thread-safe (one owner)."""

    __slots__ = ("_born", "_clock", "_current", "_half", "_previous", "horizon_s")

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        horizon_s: float = DEFAULT_HORIZON_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 2:
            raise ValueError("capacity must be >= 2")
        self.horizon_s = horizon_s
        self._half = capacity // 2
        self._clock = clock
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._born = clock()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def taken(self, uid: str, count: int) -> bool:
        """True if occurrence ``count`` (or a later one) of ``uid`` was taken already."""
        key = hash(uid) & _KEY_MASK
        best = self._current.get(key)
        if best is None:
            best = self._previous.get(key)
        return best is not None and count <= best

    def take(self, uid: str, count: int) -> bool:
        """Record occurrence ``count`` of ``uid``; False if it (or a later one) was taken."""
        key = hash(uid) & _KEY_MASK
        current = self._current
        best = current.get(key)
        if best is not None:
            if count <= best:
                return False
        else:
            best = self._previous.get(key)
            if best is not None and count <= best:
                return False
            if len(current) >= self._half:  # a new uid for a full generation
                self._rotate()
                current = self._current
        current[key] = count
        return True

    def expire(self) -> None:
        """Retire the older generation once the current one has lived ``horizon_s``."""
        if self._clock() - self._born >= self.horizon_s:
            self._rotate()

    def _rotate(self) -> None:
        self._previous = self._current
        self._current = {}
        self._born = self._clock()
