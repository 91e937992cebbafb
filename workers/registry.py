"""The kinds of worker process the supervisor can run, and what each one depends on.

A kind names its job function as a ``"module:function"`` string that only the worker process
imports, so reading the registry never imports a job module (nor its dependencies).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import TYPE_CHECKING

from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from workers.loop import WorkerContext

__all__ = ["KINDS", "RELOADABLE", "WorkerKind", "kinds", "load_target"]

_SETTINGS_FIELDS = frozenset(f.name for f in fields(WorkerSettings))
RELOADABLE = frozenset({"heartbeat_interval_s", "log_level", "log_format_json"})
"""Settings every worker applies in place on ``Reload`` (no restart)."""


@dataclass(frozen=True, slots=True)
class WorkerKind:
    """One kind of worker process."""

    name: str
    target: str
    """``"package.module:function"``; the function is ``run(ctx: WorkerContext) -> None``."""
    depends_on: frozenset[str]
    """``WorkerSettings`` fields whose change restarts this worker (with the current token)."""
    preload: tuple[str, ...] = ()
    """Heavy modules the fork server imports once, so every worker shares their pages."""

    def __post_init__(self) -> None:
        module, _, function = self.target.partition(":")
        if not module or not function.isidentifier():
            raise ValueError(f"worker kind {self.name!r}: target {self.target!r} is not "
                             "'module:function'")
        unknown = set(self.depends_on) - _SETTINGS_FIELDS
        if unknown:
            raise ValueError(f"worker kind {self.name!r}: depends_on names unknown "
                             f"WorkerSettings fields {sorted(unknown)}")

    def restart_needed(self, old: WorkerSettings, new: WorkerSettings) -> bool:
        """True if a setting this kind depends on differs between ``old`` and ``new``."""
        return any(getattr(old, part) != getattr(new, part) for part in self.depends_on)


def kinds(*entries: WorkerKind) -> Mapping[str, WorkerKind]:
    """A read-only registry of ``entries`` by name (names must be unique)."""
    table: dict[str, WorkerKind] = {}
    for entry in entries:
        if entry.name in table:
            raise ValueError(f"worker kind {entry.name!r} registered twice")
        table[entry.name] = entry
    return MappingProxyType(table)


_KUBE_CLIENT = ("kubernetes.client", "orjson")

KINDS: Mapping[str, WorkerKind] = kinds(
    WorkerKind(
        name="events",
        target="workers.events:run",
        depends_on=frozenset({"kube", "intake", "events"}),
        preload=_KUBE_CLIENT,
    ),
    WorkerKind(
        name="controlplane",
        target="workers.controlplane:run",
        depends_on=frozenset({"kube", "intake", "controlplane"}),
        preload=_KUBE_CLIENT,
    ),
)
"""The agent's worker kinds; the supervisor enables them from its configuration."""


def load_target(target: str) -> Callable[[WorkerContext], None]:
    """Import a kind's job function (in the worker process)."""
    module_name, _, function = target.partition(":")
    job = getattr(importlib.import_module(module_name), function, None)
    if not callable(job):
        raise ImportError(f"{target}: no callable {function!r} in module {module_name!r}")
    return job
