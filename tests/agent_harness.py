"""Real agent replicas for tests: ``kube-event-agent run`` subprocesses against kubesim.

    with Replicas(sim, tmp_path, env={...}) as fleet:
        a, b, c = fleet.start(3)
        leader = fleet.wait_for_leader(timeout=10)

Each replica gets its own health port, log files and DD_POD_NAME; configuration goes
through DD_* variables (and an optional datadog.yaml). Nothing here mocks anything.

    with OverlapWatch(fleet) as watch:       # samples every replica's workers every 10 ms
        ...
    assert watch.overlaps == []              # no instant with two replicas running workers

``fleet_processes(fleet)`` lists every live process of every replica (supervisor, fork
server, workers) from one scan of the process table (see ``podtree``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
from podtree import WORKER_NAMES, PodProcess, TreeScanner, pods_of, scan_tree
from polling import wait_for

from kubesim.runner import KubeSim


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    name: str
    port: int
    workdir: Path
    env: dict[str, str]
    config_path: Path | None = None
    argv: tuple[str, ...] = ()
    """The command to run instead of ``python -m supervisor run`` (e.g. another venv's
    ``kube-event-agent run``); ``--config`` is appended the same way."""
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _files: list[Any] = field(default_factory=list)

    # -- process --------------------------------------------------------------------------
    def start(self) -> Replica:
        self.stop_files()
        out = open(self.workdir / f"{self.name}.{self.restarts}.stdout", "wb")  # noqa: SIM115
        err = open(self.workdir / f"{self.name}.{self.restarts}.stderr", "wb")  # noqa: SIM115
        self._files = [out, err]
        args = list(self.argv) or [sys.executable, "-m", "supervisor", "run"]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        self.proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=err,
                                     cwd=self.workdir)
        self.restarts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    # -- observation ------------------------------------------------------------------------
    def health(self, path: str = "/health") -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            return 0, None  # not listening, or died mid-answer (IncompleteRead)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode("utf-8", "replace")

    def state(self) -> dict[str, Any] | None:
        status, body = self.health()
        return body if status and isinstance(body, dict) else None

    def is_leader(self) -> bool:
        state = self.state()
        return bool(state and state.get("role") == "leader")

    def worker_pids(self) -> dict[str, int]:
        """Live worker processes of this replica, by name (from the process table)."""
        if not self.alive():
            return {}
        found: dict[str, int] = {}
        try:
            for child in psutil.Process(self.pid).children(recursive=True):
                try:
                    name = child.name()
                    if name in WORKER_NAMES and child.status() != psutil.STATUS_ZOMBIE:
                        found[name] = child.pid
                except psutil.NoSuchProcess:
                    continue
        except psutil.NoSuchProcess:
            return {}
        return found

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob(f"{self.name}.*.std*"))
        )

    def stdout(self) -> str:
        return "".join(
            p.read_text(errors="replace")
            for p in sorted(self.workdir.glob(f"{self.name}.*.stdout"))
        )


class Replicas:
    """A fleet of replicas sharing one kubesim; everything is killed on exit."""

    def __init__(self, sim: KubeSim, workdir: Path, *, env: dict[str, str] | None = None,
                 datadog_yaml: str | None = None) -> None:
        self.sim = sim
        self.workdir = workdir
        self.extra_env = env or {}
        self.datadog_yaml = datadog_yaml
        self.replicas: list[Replica] = []

    def base_env(self, name: str, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.update({
            "DD_POD_NAME": name,
            "DD_HEALTH_PORT": str(port),
            "DD_KUBERNETES_KUBECONFIG_PATH": self.sim.kubeconfig,
            "DD_LEADER_ELECTION": "true",
            "DD_LEADER_LEASE_DURATION": "2",
            "DD_KUBE_RESOURCES_NAMESPACE": "default",
            "DD_HOSTNAME": "test-host",
            "DD_LOG_LEVEL": "debug",
            "DD_SHUTDOWN_TIMEOUT": "10",
        })
        env.update(self.extra_env)
        return env

    def add(self, *, env: dict[str, str] | None = None, argv: tuple[str, ...] = ()) -> Replica:
        name = f"replica-{len(self.replicas)}"
        port = free_port()
        config_path = None
        if self.datadog_yaml is not None:
            config_path = self.workdir / f"{name}.datadog.yaml"
            config_path.write_text(self.datadog_yaml)
        replica = Replica(name, port, self.workdir, {**self.base_env(name, port), **(env or {})},
                          config_path, argv)
        self.replicas.append(replica)
        return replica

    def start(self, n: int, *, env: dict[str, str] | None = None) -> list[Replica]:
        return [self.add(env=env).start() for _ in range(n)]

    def leaders(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive() and r.is_leader()]

    def wait_for_leader(self, timeout: float, among: list[Replica] | None = None) -> Replica:
        pool = among if among is not None else self.replicas

        def one() -> Replica | None:
            leading = [r for r in pool if r.alive() and r.is_leader()]
            return leading[0] if len(leading) == 1 else None

        return wait_for(one, timeout, "exactly one leader")

    def running_workers(self) -> dict[str, dict[str, int]]:
        return {r.name: pids for r in self.replicas if (pids := r.worker_pids())}

    def __enter__(self) -> Replicas:
        return self

    def __exit__(self, *exc: object) -> None:
        for replica in self.replicas:
            if replica.alive():
                replica.signal(signal.SIGKILL)
        for replica in self.replicas:
            if replica.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    replica.proc.wait(10)
            replica.stop_files()

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)


def fleet_processes(fleet: Replicas, scanner: TreeScanner | None = None) -> list[PodProcess]:
    """Every live replica's process tree, from one scan of the process table.

    The replicas are this process's children, so one scan of this process's descendants
    finds them all (pass a ``TreeScanner`` of this process when sampling often).
    """
    roots = {r.proc.pid: r.name for r in fleet.replicas if r.proc is not None and r.alive()}
    if not roots:
        return []
    return pods_of(scanner.scan() if scanner is not None else scan_tree(), roots)


def running_workers_of(processes: list[PodProcess]) -> dict[str, dict[str, int]]:
    """Replica name -> {worker name: pid} for the live (non-zombie) workers listed."""
    running: dict[str, dict[str, int]] = {}
    for p in processes:
        if p.is_worker:
            running.setdefault(p.replica, {})[p.name] = p.pid
    return running


class OverlapWatch:
    """Samples every replica's worker processes; records instants where two had workers.

    ``interval`` is the pause between samples; ``max_gap_s`` the longest time seen between
    two samples (what "at no instant" really means on a loaded box). Subclasses extend
    ``running`` (e.g. with orphaned workers) or ``observe`` (called with every sample).
    """

    def __init__(self, fleet: Replicas | None = None, interval: float = 0.01, *,
                 source: Callable[[], list[PodProcess]] | None = None) -> None:
        if source is None:
            assert fleet is not None, "OverlapWatch needs a fleet or a source"
            source = partial(fleet_processes, fleet, TreeScanner(psutil.Process()))
        self.source = source
        """Returns the live pod processes: ``fleet_processes(fleet)`` by default."""
        self.interval = interval
        self.overlaps: list[dict[str, dict[str, int]]] = []
        self.samples = 0
        self.max_gap_s = 0.0
        self.gaps: list[float] = []
        """Seconds between consecutive samples (for percentiles in reports)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="overlap-watch", daemon=True)

    def running(self, processes: list[PodProcess]) -> dict[str, dict[str, int]]:
        return running_workers_of(processes)

    def observe(self, now: float, processes: list[PodProcess],
                running: dict[str, dict[str, int]]) -> None:
        """Called after every sample (in the watch thread)."""

    def _run(self) -> None:
        last = None
        due = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            processes = self.source()
            running = self.running(processes)
            self.samples += 1
            if len(running) > 1:
                self.overlaps.append(running)
            if last is not None:
                self.gaps.append(now - last)
                self.max_gap_s = max(self.max_gap_s, now - last)
            last = now
            self.observe(now, processes, running)
            # Every ``interval`` from the last start, not after it: the scan's own time
            # must not stretch the gap between samples.
            due = max(due + self.interval, time.monotonic())
            time.sleep(max(0.0, due - time.monotonic()))

    def __enter__(self) -> OverlapWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
