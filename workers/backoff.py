"""The one retry policy of the project: exponential backoff with jitter, as a value.

A ``Backoff`` says how long to wait before attempt ``n``; an ``Attempts`` counts attempts
and resets after a success (or after a stable run). Used by the intake client (retries),
the events watch (reconnects) and the supervisor (worker restarts), each with its preset.
Tests inject a tiny ``base_s`` instead of sleeping for real.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["INTAKE_BACKOFF", "RESTART_BACKOFF", "WATCH_BACKOFF", "Attempts", "Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt ``n`` (0-based): ``min(cap_s, base_s * factor**n)``, jittered.

    Jitter only shortens a delay (``jitter=0.2``: uniformly 80-100 % of the nominal value),
    so ``cap_s`` is a hard bound and many clients retrying together spread out.
    """

    base_s: float = 2.0
    """First delay."""
    factor: float = 2.0
    """Growth per attempt; 1 means a constant delay."""
    cap_s: float = 64.0
    """Longest delay, whatever the attempt number."""
    jitter: float = 0.2
    """Fraction of the delay that is randomised away (0 = none, 1 = full jitter)."""

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("backoff: base_s and cap_s must be >= 0")
        if self.factor < 1:
            raise ValueError("backoff: factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff: jitter must be between 0 and 1")

    def nominal(self, attempt: int) -> float:
        """The delay before ``attempt`` without jitter (the upper bound of ``delay``)."""
        attempt = max(0, attempt)
        if self.base_s == 0:
            return 0.0
        if self.factor == 1 or self.base_s >= self.cap_s:
            return min(self.base_s, self.cap_s)
        # Compare exponents rather than computing factor**attempt, which overflows a float
        # after a few thousand attempts (an intake down for a day).
        if attempt >= math.log(self.cap_s / self.base_s, self.factor):
            return self.cap_s
        return min(self.cap_s, self.base_s * self.factor**attempt)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The jittered delay before ``attempt``, in ``[(1 - jitter) * nominal, nominal]``."""
        nominal = self.nominal(attempt)
        return nominal * (1.0 - self.jitter * rand())


INTAKE_BACKOFF = Backoff(base_s=2.0, factor=2.0, cap_s=64.0, jitter=0.2)
"""Datadog intake retries (408/429/5xx/network): 2 s doubling to 64 s, as the issue asks."""
WATCH_BACKOFF = Backoff(base_s=1.0, factor=2.0, cap_s=30.0, jitter=0.3)
"""Watch re-connects after errors; short so that a flapping API server is followed closely."""
RESTART_BACKOFF = Backoff(base_s=0.5, factor=2.0, cap_s=30.0, jitter=0.1)
"""Worker restarts by the supervisor (0.5 s -> 30 s, reset after a stable run; DESIGN.md)."""


class Attempts:
    """Counts consecutive failures under a ``Backoff``; not thread-safe (one owner).

    ``next_delay()`` gives the delay for the current attempt and counts it; ``reset()``
    after a success. With ``stable_after_s``, a run that lasted that long since
    ``started()`` resets the count by itself (the supervisor's worker restarts).
    """

    __slots__ = ("_clock", "_count", "_rand", "_started_at", "policy", "stable_after_s")

    def __init__(
        self,
        policy: Backoff,
        *,
        stable_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.stable_after_s = stable_after_s
        self._clock = clock
        self._rand = rand
        self._count = 0
        self._started_at: float | None = None

    @property
    def count(self) -> int:
        """Failures since the last reset."""
        return self._count

    def started(self) -> None:
        """Mark the start of a run (e.g. a worker process) for ``stable_after_s``."""
        self._started_at = self._clock()

    def reset(self) -> None:
        """Success: the next failure waits ``base_s`` again."""
        self._count = 0

    def next_delay(self) -> float:
        """Count a failure and return how long to wait before the next attempt."""
        if (
            self.stable_after_s is not None
            and self._started_at is not None
            and self._clock() - self._started_at >= self.stable_after_s
        ):
            self._count = 0
        self._started_at = None
        delay = self.policy.delay(self._count, self._rand)
        self._count += 1
        return delay

    def wait(self, stop: threading.Event) -> bool:
        """Count a failure and sleep its delay, waking early if ``stop`` is set.

        Returns True if ``stop`` was set (the caller should give up).
        """
        return stop.wait(self.next_delay())

    def __repr__(self) -> str:
        return f"Attempts(count={self._count}, policy={self.policy!r})"
