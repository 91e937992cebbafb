"""Reading the control plane's health: componentstatuses, /readyz and /livez, as results.

One ``probe`` call makes one observation: per component a status (0 OK, 2 CRITICAL,
3 UNKNOWN) and a message, as the Datadog Agent's kubernetes_apiserver check reads them
(pkg/collector/corechecks/cluster/kubernetesapiserver, ``parseComponentStatus`` and
``controlPlaneHealthCheck``)::

    componentstatuses .. condition ``Healthy``: True → OK (its message), False → CRITICAL
                         (its error, else its message), anything else → UNKNOWN
    /readyz, /livez .... ``?verbose`` lists the server's checks: ``[+]etcd ok`` → OK,
                         ``[-]etcd failed: reason withheld`` → CRITICAL; a check listed by
                         both endpoints is one result, CRITICAL if either failed it
    apiserver .......... OK when the API server answered; CRITICAL with the error (no
                         secrets) when a request failed or timed out, or a health endpoint
                         said "check failed"

The readyz reading is used when componentstatuses answers 404 (removed) or 403 (RBAC), and
always with ``use_readyz``; after a fallback componentstatuses is tried again every
``REPROBE_S`` (a Role may be granted later).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.kubeapi import ApiError, KubeApi

__all__ = [
    "COMPONENTSTATUSES",
    "CRITICAL",
    "OK",
    "REPROBE_S",
    "STATUS_NAMES",
    "UNKNOWN",
    "HealthAnswer",
    "Observation",
    "Prober",
    "Result",
    "client_failure",
    "component_results",
    "health_results",
]

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
COMPONENTSTATUSES = "/api/v1/componentstatuses"
HEALTH_ENDPOINTS = ("readyz", "livez")
APISERVER = "apiserver"
REPROBE_S = 600.0
"""After a 403/404, how long the readyz reading is used before componentstatuses is retried."""
_FALLBACK_CODES = frozenset({403, 404})
_AUTH_CODES = frozenset({401, 403})
_LINE = re.compile(r"\[([+-])\](\S+)\s*(.*)")
_MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class Result:
    """One component's status: one ``kube_apiserver_controlplane.up`` service check."""

    component: str
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class Observation:
    """What one round saw."""

    source: str
    """``componentstatuses``, ``readyz`` (with /livez) or ``client`` (no client could be built)."""
    results: tuple[Result, ...]
    failures: int = 0
    """Requests that failed or timed out (each made ``apiserver`` CRITICAL)."""
    unable: str = ""
    """Why the worker cannot do its job (credentials refused, no client): health detail."""
    fallback: str = field(default="", compare=False)
    """Set on the round that fell back from componentstatuses: the answer that made it."""


def component_results(listing: Any) -> list[Result]:
    """A ``ComponentStatusList`` as results, the Agent's ``parseComponentStatus`` rules.

    Items without a name or conditions and conditions other than ``Healthy`` are skipped.
    """
    items = listing.get("items") if isinstance(listing, Mapping) else None
    results: list[Result] = []
    for item in items or ():
        if not isinstance(item, Mapping):
            continue
        name = (item.get("metadata") or {}).get("name")
        conditions = item.get("conditions")
        if not name or not isinstance(conditions, list):
            continue
        for cond in conditions:
            if not isinstance(cond, Mapping) or cond.get("type") != "Healthy":
                continue
            message, error = str(cond.get("message") or ""), str(cond.get("error") or "")
            if cond.get("status") == "True":
                results.append(Result(name, OK, message))
            elif cond.get("status") == "False":
                results.append(Result(name, CRITICAL, error or message))
            else:
                # The Agent leaves UNKNOWN's message empty; whatever the server said helps.
                results.append(Result(name, UNKNOWN, message or error))
    return results


@dataclass(frozen=True, slots=True)
class HealthAnswer:
    """One health endpoint's answer: its listed checks, or why there is none."""

    endpoint: str
    checks: tuple[tuple[str, bool, str], ...] = ()
    """(name, passed, the line's text after the marker), in the server's order."""
    failed: bool = False
    """The endpoint said "check failed" (HTTP 500 with its list)."""
    error: ApiError | None = None


def parse_health(text: str) -> tuple[tuple[str, bool, str], ...]:
    """The ``[+]name ok`` / ``[-]name failed: …`` lines of a verbose health answer."""
    checks = []
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match:
            sign, name, rest = match.groups()
            checks.append((name, sign == "+", rest))
    return tuple(checks)


def health_results(answers: Sequence[HealthAnswer]) -> list[Result]:
    """Per listed check one result (worst over the endpoints), then ``apiserver``."""
    merged: dict[str, list[str]] = {}
    for answer in answers:
        for name, passed, rest in answer.checks:
            failures = merged.setdefault(name, [])
            if not passed:
                failures.append(f"/{answer.endpoint}: {name} {rest}".rstrip())
    results = [
        Result(name, CRITICAL, "; ".join(failures)) if failures else Result(name, OK, "ok")
        for name, failures in merged.items()
        if name != APISERVER
    ]
    errors: dict[str, list[str]] = {}  # one error for both endpoints is said once
    failed = []
    for answer in answers:
        if answer.error is not None:
            errors.setdefault(str(answer.error), []).append("/" + answer.endpoint)
        elif answer.failed:
            names = ", ".join(name for name, passed, _ in answer.checks if not passed)
            failed.append(f"{answer.endpoint} check failed: {names}")
    problems = [f"{', '.join(paths)}: {error}" for error, paths in errors.items()] + failed
    results.append(_failed("; ".join(problems)) if problems else Result(APISERVER, OK, "ok"))
    return results


class Prober:
    """Reads the control plane through one ``KubeApi``; one caller at a time."""

    def __init__(self, api: KubeApi, *, use_readyz: bool, clock: Any = time.monotonic) -> None:
        self.api = api
        self.use_readyz = use_readyz
        self._clock = clock
        self._readyz_until = 0.0

    @property
    def fallen_back(self) -> bool:
        """componentstatuses is currently skipped after a 403/404."""
        return self._readyz_until > 0.0

    def probe(self) -> Observation:
        """One observation; never raises ``ApiError`` (failures become results)."""
        now = self._clock()
        if self.use_readyz or now < self._readyz_until:
            return self._health()
        try:
            listing = self.api.get(COMPONENTSTATUSES)
        except ApiError as exc:
            if exc.code not in _FALLBACK_CODES:
                return Observation("componentstatuses", (_failed(f"{COMPONENTSTATUSES}: {exc}"),),
                                   failures=1, unable=_unable(exc, COMPONENTSTATUSES))
            self._readyz_until = now + REPROBE_S
            health = self._health()
            return Observation(health.source, health.results, health.failures, health.unable,
                               fallback=str(exc))
        self._readyz_until = 0.0
        # The Agent sends nothing for the API server here; we send OK so that the CRITICAL
        # sent while it was unreachable clears (a service check keeps its last status).
        results = [*component_results(listing), Result(APISERVER, OK, "ok")]
        return Observation("componentstatuses", tuple(results))

    def _health(self) -> Observation:
        answers = [self._read(endpoint) for endpoint in HEALTH_ENDPOINTS]
        errors = [a for a in answers if a.error is not None]
        unable = next((_unable(a.error, "/" + a.endpoint) for a in errors
                       if a.error is not None and a.error.code in _AUTH_CODES), "")
        return Observation("readyz", tuple(health_results(answers)), failures=len(errors),
                           unable=unable)

    def _read(self, endpoint: str) -> HealthAnswer:
        try:
            text = self.api.get(f"/{endpoint}?verbose")
        except ApiError as exc:
            # A failing check makes the server answer 500 with the same list.
            checks = parse_health(exc.text) if exc.code >= 500 else ()
            if checks:
                return HealthAnswer(endpoint, checks, failed=True)
            return HealthAnswer(endpoint, error=exc)
        return HealthAnswer(endpoint, parse_health(text if isinstance(text, str) else ""))


def client_failure(detail: str) -> Observation:
    """No Kubernetes client could be built (kubeconfig, in-cluster token): CRITICAL."""
    return Observation("client", (_failed(detail),), failures=1, unable=detail)


def _failed(message: str) -> Result:
    return Result(APISERVER, CRITICAL, message[:_MAX_MESSAGE])


def _unable(exc: ApiError, path: str) -> str:
    if exc.code in _AUTH_CODES:
        return f"the API server refused {path}: {exc}"[:_MAX_MESSAGE]
    return ""
