"""The soak's process sampler, run as a process of its own so the GIL of the test process
(kubesim, the intake, the stream) cannot stretch its sampling interval.

    python procwatch.py <test pid> <interval s>

Every ``interval`` it scans the test process's descendants (``podtree.TreeScanner``),
finds the replicas' supervisors (direct children running ``supervisor run``, named by their
``DD_POD_NAME``) and feeds the harness's ``OverlapWatch`` logic, extended with: workers of a
dead supervisor (they count as running, and as orphans once a grace has passed), every
worker run (for the duplicate attribution) and the RSS of every process. It prints READY
after its first sample and one JSON summary line when its stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import psutil
from agent_harness import OverlapWatch
from podtree import PodProcess, ProcKey, ProcTable, TreeScanner, alive, pods_of

WARM_S = 10.0


class Supervisors:
    """The replicas' supervisors among the test process's children, by their pod name."""

    def __init__(self, parent: psutil.Process) -> None:
        self.parent = parent
        self._labels: dict[ProcKey, str] = {}

    def roots(self, found: ProcTable) -> dict[int, str]:
        roots = {}
        for pid, (ppid, _name, created, zombie) in found.items():
            if ppid != self.parent.pid or zombie:
                continue
            key = (pid, created)
            label = self._labels.get(key)
            if label is None:
                # Not cached when negative: a child seen between fork and exec still shows
                # the test's own command line, and would be missed for good.
                label = self._label(pid)
                if label is not None:
                    self._labels[key] = label
            if label is not None:
                roots[pid] = label
        return roots

    @staticmethod
    def _label(pid: int) -> str | None:
        try:
            proc = psutil.Process(pid)
            cmdline = proc.cmdline()
            if "supervisor" not in cmdline or "run" not in cmdline:
                return None
            return proc.environ().get("DD_POD_NAME") or str(pid)
        except psutil.Error:
            return None


class ProcessWatch(OverlapWatch):
    """``OverlapWatch`` plus orphans, worker runs and memory (see the module docstring)."""

    def __init__(self, parent: psutil.Process, interval: float, *, rss_every_s: float = 0.5,
                 orphan_grace_s: float = 3.0) -> None:
        self.supervisors = Supervisors(parent)
        self.scanner = TreeScanner(parent)
        super().__init__(interval=interval, source=self._processes)
        self.parent = parent
        self.rss_every_s = rss_every_s
        self.orphan_grace_s = orphan_grace_s
        self.known: dict[ProcKey, PodProcess] = {}
        self.pending: dict[ProcKey, tuple[PodProcess, float]] = {}
        self.orphans: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self._open: dict[ProcKey, dict[str, Any]] = {}
        self.rss_max: dict[str, tuple[int, str]] = {}
        self.rss_base: dict[ProcKey, int] = {}
        """RSS once warmed up (first sample WARM_S after the process was first seen)."""
        self.rss_growth: dict[str, int] = {}
        self.first_seen: dict[ProcKey, float] = {}
        self._rss_at = 0.0
        self._tracked: dict[ProcKey, PodProcess] = {}
        """Every process seen under a live supervisor, until it is gone: one sample that
        misses a process (a racy read under load) must not make its orphaning invisible."""
        self.first_sample = threading.Event()

    def _processes(self) -> list[PodProcess]:
        found = self.scanner.scan()
        return pods_of(found, self.supervisors.roots(found))

    def running(self, processes: list[PodProcess]) -> dict[str, dict[str, int]]:
        running = super().running(processes)
        for proc, _died in self.pending.values():
            if proc.is_worker:  # a worker whose supervisor died, still running: it counts
                running.setdefault(f"{proc.replica}#orphan", {})[proc.name] = proc.pid
        return running

    def observe(self, now: float, processes: list[PodProcess],
                running: dict[str, dict[str, int]]) -> None:
        live = {p.supervisor_pid for p in processes}
        seen_now = {(p.pid, p.created) for p in processes}
        for key, p in list(self._tracked.items()):
            if p.supervisor_pid not in live and key not in seen_now:
                del self._tracked[key]  # its supervisor died: follow it until gone
                self.pending.setdefault(key, (p, now))
        for p in processes:
            key = (p.pid, p.created)
            self.known[key] = p
            self._tracked[key] = p
            self.first_seen.setdefault(key, now)
            self.pending.pop(key, None)  # under a live supervisor after all (a missed read)
            if p.is_worker:
                run = self._open.get(key)
                if run is None:
                    run = self._open[key] = {"replica": p.replica, "name": p.name,
                                             "pid": p.pid, "first": now, "last": now}
                    self.runs.append(run)
                run["last"] = now
        current = {(p.pid, p.created) for p in processes if p.is_worker}
        for key in [k for k in self._open if k not in current]:
            del self._open[key]
        for key, (proc, died) in list(self.pending.items()):
            if not alive(key):
                del self.pending[key]
            elif now - died > self.orphan_grace_s and all(o["pid"] != proc.pid
                                                           for o in self.orphans):
                self.orphans.append({"replica": proc.replica, "pid": proc.pid,
                                     "name": proc.name, "supervisor": proc.supervisor_pid})
        for key in [k for k in self._tracked if k not in seen_now and not alive(k)]:
            del self._tracked[key]
        if now >= self._rss_at:
            self._rss_at = now + self.rss_every_s
            self._sample_rss(now, processes)
        self.first_sample.set()

    def _sample_rss(self, now: float, processes: list[PodProcess]) -> None:
        for p in processes:
            if p.zombie:
                continue
            try:
                rss = psutil.Process(p.pid).memory_info().rss
            except psutil.Error:
                continue
            role = "supervisor" if p.is_supervisor else p.name if p.is_worker else "helper"
            if rss > self.rss_max.get(role, (0, ""))[0]:
                self.rss_max[role] = (rss, f"{p.replica} pid {p.pid}")
            key = (p.pid, p.created)
            if now - self.first_seen[key] < WARM_S:
                continue  # imports, the fork server's preload: growth that is no leak
            base = self.rss_base.setdefault(key, rss)
            self.rss_growth[role] = max(self.rss_growth.get(role, 0), rss - base)

    def summary(self) -> dict[str, Any]:
        gaps = sorted(self.gaps)

        def pct(q: float) -> float | None:
            return round(1000 * gaps[min(len(gaps) - 1, int(q * len(gaps)))], 1) if gaps else None

        return {
            "samples": self.samples, "overlap_count": len(self.overlaps),
            "overlaps": self.overlaps[:10],
            "gap_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": round(1000 * self.max_gap_s, 1),
                       "over_20ms": sum(1 for g in gaps if g > 0.02)},
            "orphans": self.orphans, "runs": self.runs,
            "rss_max": self.rss_max, "rss_growth": self.rss_growth,
            "known": [list(k) for k in self.known],
            "cpu_s": round(sum(os.times()[:2]), 2),
        }


def main(argv: list[str]) -> int:
    parent, interval = psutil.Process(int(argv[1])), float(argv[2])
    watch = ProcessWatch(parent, interval)
    with watch:
        watch.first_sample.wait(30)
        print("READY", flush=True)
        sys.stdin.read()  # the soak closes our stdin to stop us
    print(json.dumps(watch.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
