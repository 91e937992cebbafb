"""Fault injection: failing statuses, added latency, dropped watches, and API pauses.

A rule matches requests by path (regex, searched), verb (RequestInfo verbs: get, list,
watch, create, update, patch, delete, ...) and user (regex), fires with probability
``rate``, for ``duration`` seconds and/or ``times`` firings. The admin API
(``/_kubesim/``) is never faulted.
"""

from __future__ import annotations

import itertools
import random
import re
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from kubesim.requestinfo import RequestInfo

__all__ = ["PAUSE_MODES", "Fault", "FaultSpec", "Faults"]

PAUSE_MODES = ("error", "hang", "drop")


@dataclass(frozen=True, slots=True)
class FaultSpec:
    status: int | None = None
    """Answer matching requests with this HTTP status (a Status body with its reason)."""
    rate: float = 1.0
    path: str | None = None
    verbs: tuple[str, ...] = ()
    user: str | None = None
    duration: float | None = None
    latency: float = 0.0
    """Seconds added before matching requests are handled."""
    drop_watches: bool = False
    """Cut matching watch connections (open ones now, new ones after ``drop_after`` s)."""
    drop_after: float = 0.0
    times: int | None = None
    message: str = "kubesim: injected fault"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSpec:
        """Validate admin-API input; ValueError names the offending key."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(f"unknown fault field {key!r}")
        kwargs = dict(data)
        if "verbs" in kwargs:
            verbs = kwargs["verbs"]
            if isinstance(verbs, str):
                verbs = [verbs]
            kwargs["verbs"] = tuple(str(v) for v in verbs or ())
        spec = cls(**kwargs)
        spec.check()
        return spec

    def check(self) -> None:
        if self.status is not None and not (isinstance(self.status, int) and
                                            400 <= self.status <= 599):
            raise ValueError(
                f"fault status must be an HTTP error code 400-599, got {self.status!r}")
        if not 0.0 <= float(self.rate) <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {self.rate!r}")
        for name in ("path", "user"):
            pattern = getattr(self, name)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"fault {name} is not a valid regex: {exc}") from None
        for name in ("latency", "drop_after"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"fault {name} must be >= 0")
        if self.duration is not None and float(self.duration) <= 0:
            raise ValueError("fault duration must be > 0 seconds")
        if self.times is not None and int(self.times) < 1:
            raise ValueError("fault times must be >= 1")
        if self.status is None and not self.latency and not self.drop_watches:
            raise ValueError("a fault needs at least one of status, latency, drop_watches")


@dataclass(slots=True)
class Fault:
    id: str
    spec: FaultSpec
    until: float | None
    remaining: int | None
    path_re: re.Pattern[str] | None
    user_re: re.Pattern[str] | None

    def live(self, now: float) -> bool:
        return (self.until is None or now < self.until) and self.remaining != 0

    def matches(self, info: RequestInfo, user: str) -> bool:
        spec = self.spec
        if spec.verbs and info.verb not in spec.verbs:
            return False
        if self.path_re is not None and not self.path_re.search(info.path):
            return False
        return self.user_re is None or bool(self.user_re.search(user))

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self.spec), "remaining": self.remaining,
                "expiresIn": None if self.until is None else max(0.0, self.until -
                                                                  time.monotonic())}


class Faults:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rules: dict[str, Fault] = {}
        self._ids = itertools.count(1)
        self._rng = rng or random.Random()
        self.pause_until = 0.0
        self.pause_mode = "error"

    def add(self, spec: FaultSpec) -> Fault:
        spec.check()
        fid = f"fault-{next(self._ids)}"
        until = None if spec.duration is None else time.monotonic() + float(spec.duration)
        fault = Fault(fid, spec, until, spec.times,
                      re.compile(spec.path) if spec.path else None,
                      re.compile(spec.user) if spec.user else None)
        self._rules[fid] = fault
        return fault

    def remove(self, fid: str) -> bool:
        return self._rules.pop(fid, None) is not None

    def clear(self) -> None:
        self._rules.clear()
        self.pause_until = 0.0

    def list(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [f.describe() for f in self._rules.values() if f.live(now)]

    def pause(self, seconds: float, mode: str = "error") -> None:
        if mode not in PAUSE_MODES:
            raise ValueError(f"pause mode must be one of {', '.join(PAUSE_MODES)}, got {mode!r}")
        if seconds < 0:
            raise ValueError("pause seconds must be >= 0")
        self.pause_until = time.monotonic() + seconds
        self.pause_mode = mode

    def sample(self) -> float:
        """A uniform draw in [0, 1) from the faults' random source (rates compare to it)."""
        return self._rng.random()

    def paused(self) -> float:
        """Seconds of pause left (0 when the API is available)."""
        return max(0.0, self.pause_until - time.monotonic())

    def fire(self, info: RequestInfo, user: str) -> list[Fault]:
        """The rules that fire for this request (each consumes one of its ``times``)."""
        if not self._rules:
            return []
        now = time.monotonic()
        fired = []
        for fid, fault in list(self._rules.items()):
            if not fault.live(now):
                del self._rules[fid]
                continue
            if fault.matches(info, user) and self._rng.random() < fault.spec.rate:
                if fault.remaining is not None:
                    fault.remaining -= 1
                fired.append(fault)
        return fired

    def watch_droppers(self, info: RequestInfo, user: str) -> list[Fault]:
        """Live drop-watches rules matching an open watch (no sampling, no consumption)."""
        now = time.monotonic()
        return [f for f in self._rules.values()
                if f.spec.drop_watches and f.live(now) and f.matches(info, user)]
