"""Real agent replicas for benchmarks, and what is measured on them from outside.

    Agent ....... one ``python -m supervisor run`` with DD_* configuration (its own health
                  port, log file, DD_POD_NAME and DD_HOSTNAME = its name)
    LockWatch ... a watch on the lock object from the bench: when the holder changed
    log_times ... when given lines first appeared in an agent's log (the log's own stamps)
    pod_memory .. USS / PSS / RSS of every process of one pod (psutil); pod_cpu_s its CPU
    CountsPoller  when a client's request counter at kubesim first moved (25 ms resolution)

Modelled on tests/agent_harness.py, which bench scripts do not import.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
import urllib3
from _cluster import API_KEY, Intake, Sim

__all__ = ["Agent", "CountsPoller", "LockWatch", "agent_env", "free_port", "log_times",
           "pod_cpu_s", "pod_memory", "replica_of", "wait_for"]

LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"
WORKER_NAMES = ("events", "controlplane")
_LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.02, *, alive: Iterable[Agent] = ()) -> Any:
    """Poll ``predicate`` until truthy (returned); TimeoutError after ``timeout``, and
    RuntimeError at once if one of the ``alive`` agents has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for agent in alive:
            agent.expect_alive()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def agent_env(sim: Sim, *, lease_s: float, intake: Intake | None = None,
              events: bool = True, **extra: str) -> dict[str, str]:
    """DD_* configuration of a replica (name, port added by ``Agent``)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DD_") and k not in ("KUBERNETES", "KUBERNETES_SERVICE_HOST")}
    env.update({
        "DD_KUBERNETES_KUBECONFIG_PATH": sim.kubeconfig,
        "DD_LEADER_ELECTION": "true",
        "DD_LEADER_LEASE_DURATION": f"{lease_s:g}",
        "DD_KUBE_RESOURCES_NAMESPACE": "default",
        "DD_LOG_LEVEL": "info",
        "DD_COLLECT_KUBERNETES_EVENTS": "true" if events else "false",
        "DD_COLLECT_CONTROLPLANE_CHECKS": "false",
    })
    if intake is not None:
        env.update({"DD_API_KEY": API_KEY, "DD_DD_URL": intake.url})
    env.update(extra)
    return env


class Agent:
    """One supervisor process (the pod's PID 1)."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "DD_POD_NAME": name, "DD_HOSTNAME": name,
                    "DD_HEALTH_PORT": str(self.port)}
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0

    def start(self) -> Agent:
        self.starts += 1
        self.log_path = self.workdir / f"{self.name}.{self.starts}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child holds it
        self.started_at = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor", "run"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def expect_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc is not None else None
            tail = "\n".join(self.log().splitlines()[-5:])
            raise RuntimeError(f"agent {self.name} exited ({code}):\n{tail}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 25.0) -> None:
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)  # type: ignore[union-attr]

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
            self.proc.wait(10)  # type: ignore[union-attr]

    # -- observation ----------------------------------------------------------------------
    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def state(self) -> dict[str, Any] | None:
        status, body = self.get("/health")
        if not status:
            return None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None

    def ready(self) -> bool:
        return self.get("/ready", 1.0)[0] == 200

    def is_leader(self) -> bool:
        state = self.state()
        return bool(state and state.get("role") == "leader")

    def worker(self, kind: str = "events") -> dict[str, Any]:
        state = self.state() or {}
        return next((w for w in state.get("workers", []) if w.get("kind") == kind), {})

    def worker_pids(self) -> dict[str, int]:
        """Live worker processes by name, from the process table."""
        found: dict[str, int] = {}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.name() in WORKER_NAMES and child.status() != psutil.STATUS_ZOMBIE:
                        found[child.name()] = child.pid
        return found

    def log(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.workdir.glob(f"{self.name}.*.log")))


def log_times(text: str, patterns: dict[str, str], since: float) -> dict[str, float]:
    """For each label, the time stamp of the first log line at or after ``since`` that
    contains its pattern (a plain substring)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        m = _LOG_STAMP.match(line)
        if not m:
            continue
        at = datetime.fromisoformat(m.group(1) + "+00:00").timestamp()
        if at < since - 0.0005:  # the log's stamps are rounded down to the millisecond
            continue
        for label, pattern in patterns.items():
            if label not in found and pattern in line:
                found[label] = at
    return found


class LockWatch:
    """Watches the lock (Endpoints) from the bench: ``changes`` is [(time, holder, transitions)]
    for every change of the holder, the empty holder of a release included."""

    def __init__(self, sim: Sim, name: str = "datadog-leader-election",
                 namespace: str = "default") -> None:
        self.sim = sim
        self.path = (f"/api/v1/namespaces/{namespace}/endpoints?watch=1&"
                     f"fieldSelector=metadata.name%3D{name}&timeoutSeconds=3600")
        self.changes: list[tuple[float, str, int]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lock-watch")
        self._thread.start()

    def _run(self) -> None:
        http = urllib3.PoolManager(headers={"Authorization": f"Bearer {self.sim.token}"})
        while not self._stop.is_set():
            try:
                resp = http.request("GET", self.sim.url + self.path, preload_content=False,
                                    timeout=urllib3.Timeout(connect=5, read=None),
                                    retries=False)
                pending = b""
                for chunk in resp.stream(4096):
                    at = time.time()
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self._seen(at, orjson.loads(line))
                    if self._stop.is_set():
                        break
            except (urllib3.exceptions.HTTPError, OSError, ValueError):
                time.sleep(0.1)

    def _seen(self, at: float, event: dict[str, Any]) -> None:
        obj = event.get("object") or {}
        text = ((obj.get("metadata") or {}).get("annotations") or {}).get(LEADER_ANNOTATION)
        if not text:
            return
        record = orjson.loads(text)
        holder = record.get("holderIdentity") or ""
        with self.lock:
            if not self.changes or self.changes[-1][1] != holder:
                self.changes.append((at, holder, int(record.get("leaderTransitions") or 0)))

    def holder(self) -> str:
        with self.lock:
            return self.changes[-1][1] if self.changes else ""

    def after(self, since: float) -> list[tuple[float, str, int]]:
        with self.lock:
            return [c for c in self.changes if c[0] >= since]

    def close(self) -> None:
        self._stop.set()


def replica_of(identity: str) -> str:
    """``r1-3fa2b1`` (DD_POD_NAME plus the per-start suffix) -> ``r1``."""
    return identity.rsplit("-", 1)[0] if identity else ""


class CountsPoller:
    """Polls kubesim's request counters; ``first(match)`` = when a matching counter first
    grew after ``start()``. ``match(user_agent, "verb resource")`` selects the counters."""

    def __init__(self, sim: Sim, interval_s: float = 0.025) -> None:
        self.sim = sim
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[tuple[str, str], int]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CountsPoller:
        self._stop.clear()
        self.samples = []
        self._thread = threading.Thread(target=self._run, daemon=True, name="counts-poller")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            before = time.time()
            snap = self.sim.counts()
            flat = {(c["userAgent"], key): n for c in snap["clients"]
                    for key, n in c["requests"].items()}
            self.samples.append((before, flat))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def first(self, match: Callable[[str, str], bool]) -> float | None:
        """When a matching counter first grew: the midpoint of the two samples around it."""
        if not self.samples:
            return None
        base = {k: n for k, n in self.samples[0][1].items() if match(*k)}
        prev_at = self.samples[0][0]
        for at, cur in self.samples[1:]:
            if any(n > base.get(k, 0) for k, n in cur.items() if match(*k)):
                return (prev_at + at) / 2
            prev_at = at
        return None


def pod_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and its live descendants."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
    return total


def pod_memory(root_pid: int) -> list[dict[str, Any]]:
    """USS, PSS and RSS (bytes) of a supervisor and all its descendants, labelled."""
    rows = []
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return rows
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            mem = proc.memory_full_info()
            rows.append({"process": _label(proc, root_pid), "pid": proc.pid,
                         "uss": mem.uss, "pss": mem.pss, "rss": mem.rss})
    return rows


def _label(proc: psutil.Process, root: int) -> str:
    if proc.pid == root:
        return "supervisor"
    name = proc.name()
    if name in WORKER_NAMES:
        return name
    cmd = " ".join(proc.cmdline())
    if "forkserver" in cmd:
        return "forkserver"
    if "resource_tracker" in cmd:
        return "resource_tracker"
    return name
