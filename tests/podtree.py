"""The process trees of agent pods, from the process table (psutil), for watchers.

    found = scan_tree()                       # this process's descendants, one /proc pass
    pods = pods_of(found, {sup_pid: "replica-0"})
    scanner = TreeScanner(psutil.Process())   # the same, incremental: ~1 ms a sample

A replica's processes are its supervisor, the fork server and the workers, which name
themselves ``events`` / ``controlplane`` (PR_SET_NAME); ``(pid, created)`` tells a process
apart from a later one that reuses its pid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import psutil

__all__ = ["WORKER_NAMES", "PodProcess", "ProcKey", "ProcTable", "TreeScanner", "alive", "pods_of",
           "scan_tree"]

WORKER_NAMES = frozenset({"events", "controlplane"})
ProcKey = tuple[int, float]
"""A process by pid and create time: a pid alone may be reused."""


@dataclass(frozen=True)
class PodProcess:
    """One live process of a replica; ``(pid, created)`` tells it apart from a reused pid."""

    replica: str
    pid: int
    name: str
    created: float
    supervisor_pid: int
    zombie: bool

    @property
    def is_supervisor(self) -> bool:
        return self.pid == self.supervisor_pid

    @property
    def is_worker(self) -> bool:
        return self.name in WORKER_NAMES and not self.zombie


ProcTable = dict[int, tuple[int, str, float, bool]]
"""pid -> (parent pid, name, create time, zombie)."""


def scan_tree(parent: psutil.Process | None = None) -> ProcTable:
    """Every descendant of ``parent`` (default: this process), from one pass over /proc."""
    found: ProcTable = {}
    for proc in (parent or psutil.Process()).children(recursive=True):
        try:
            with proc.oneshot():
                found[proc.pid] = (proc.ppid(), proc.name(), proc.create_time(),
                                   proc.status() == psutil.STATUS_ZOMBIE)
        except psutil.Error:
            continue
    return found


class TreeScanner:
    """``scan_tree`` made incremental, for watchers that sample every few milliseconds.

    A full scan reads every process's stat file (3-10 ms on a busy box); this lists /proc,
    reads the parent of new pids only, and re-reads just the descendants of ``parent``
    (their name changes after start, and they may turn zombie): about a millisecond.
    """

    def __init__(self, parent: psutil.Process) -> None:
        self.parent = parent
        self._parents: dict[int, int] = {}

    def scan(self) -> ProcTable:
        pids = set(psutil.pids())
        for pid in self._parents.keys() - pids:
            del self._parents[pid]
        for pid in pids - self._parents.keys():
            try:
                self._parents[pid] = psutil.Process(pid).ppid()
            except psutil.Error:
                continue
        top = self.parent.pid
        memo: dict[int, bool] = {top: True}
        found: ProcTable = {}
        for pid in self._parents:
            if self._descends(pid, top, memo):
                try:
                    proc = psutil.Process(pid)
                    with proc.oneshot():
                        entry = (proc.ppid(), proc.name(), proc.create_time(),
                                 proc.status() == psutil.STATUS_ZOMBIE)
                except psutil.Error:
                    continue
                self._parents[pid] = entry[0]  # re-parented since (its parent died)?
                found[pid] = entry
        return found

    def _descends(self, pid: int, top: int, memo: dict[int, bool]) -> bool:
        chain = []
        while pid not in memo:
            chain.append(pid)
            ppid = self._parents.get(pid)
            if ppid is None or ppid in (0, pid) or len(chain) > 64:
                memo[pid] = False
                break
            pid = ppid
        verdict = memo[pid]
        for p in chain:
            memo[p] = verdict
        return verdict and chain != []


def pods_of(found: ProcTable, roots: Mapping[int, str]) -> list[PodProcess]:
    """The processes of ``found`` under a supervisor of ``roots`` (pid -> replica name),
    each attributed to its replica through its parent chain."""
    out: list[PodProcess] = []
    for pid, (_ppid, name, created, zombie) in found.items():
        root, hops = pid, 0
        while root not in roots and root in found and hops < 16:
            root, hops = found[root][0], hops + 1
        if root in roots:
            out.append(PodProcess(roots[root], pid, name, created, root, zombie))
    return out


def alive(key: ProcKey) -> bool:
    """That very process still runs (a zombie does not count)."""
    pid, created = key
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
