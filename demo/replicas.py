"""The demo's agent replicas: real ``python -m supervisor run`` processes, as in a pod.

Each replica is configured only through ``DD_*`` variables, like a DaemonSet's container,
and writes its log (stdout and stderr) to ``<log_dir>/<name>.<start>.log``. Replicas run in
their own process group, so a Ctrl-C at the terminal reaches the demo alone and the demo
stops them in order; every process ever seen in a replica's tree (the supervisor, its fork
server and workers) is remembered so that ``stop_all`` can prove none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

__all__ = ["AgentEnv", "Replica", "free_port", "stop_all"]

_REPO_ROOT = Path(__file__).resolve().parents[1]
# Health is on 127.0.0.1: never through a proxy from the user's environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class AgentEnv:
    """What every replica shares; ``for_replica`` adds what is its own."""

    kubeconfig: str
    intake_url: str
    lease_s: int
    checkpoint_interval_s: float = 1.0
    shutdown_timeout_s: float = 10.0
    controlplane_interval_s: float = 5.0
    api_key: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)

    def for_replica(self, name: str, health_port: int) -> dict[str, str]:
        # The user's own DD_* and in-cluster settings must not leak into the demo.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("DD_") and k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, (str(_REPO_ROOT), os.environ.get("PYTHONPATH", ""))))
        env.update({
            "KUBERNETES": "true",
            "DD_POD_NAME": name,
            "DD_HOSTNAME": name,  # the intake tells senders apart by internalHostname
            "DD_HEALTH_PORT": str(health_port),
            "DD_KUBERNETES_KUBECONFIG_PATH": self.kubeconfig,
            "DD_KUBE_RESOURCES_NAMESPACE": "default",
            "DD_COLLECT_KUBERNETES_EVENTS": "true",
            "DD_LEADER_ELECTION": "true",
            "DD_LEADER_LEASE_DURATION": str(self.lease_s),
            "DD_TOKEN_CHECKPOINT_INTERVAL": str(self.checkpoint_interval_s),
            "DD_SHUTDOWN_TIMEOUT": str(self.shutdown_timeout_s),
            "DD_CONTROLPLANE_CHECK_INTERVAL": str(self.controlplane_interval_s),
            # Any key goes for the local intake; a well-formed one spares a warning per log.
            "DD_API_KEY": self.api_key,
            "DD_DD_URL": self.intake_url,
            "DD_TAGS": "env:demo",
            "DD_LOG_LEVEL": "info",
        })
        return env


@dataclass
class Replica:
    name: str
    port: int
    env: Mapping[str, str]
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_path: Path | None = None
    family: dict[int, psutil.Process] = field(default_factory=dict)
    """Every process seen in this replica's tree, across restarts (pid -> handle)."""
    _log: IO[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the process; must be called from the main thread (the
        launcher's parent-death signal fires when the *thread* that forked it exits)."""
        self.close_log()
        self.log_path = self.log_dir / f"{self.name}.{self.starts}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        args = [sys.executable, "-m", "demo.launch", str(os.getpid()),
                sys.executable, "-m", "supervisor", "run"]
        self.proc = subprocess.Popen(args, env=dict(self.env), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.log_dir, process_group=0)
        self.family[self.proc.pid] = psutil.Process(self.proc.pid)
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, signum: int) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def observe_family(self) -> None:
        """Remember the current processes of this replica's tree (called periodically)."""
        if not self.alive():
            return
        assert self.proc is not None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.family.setdefault(child.pid, child)

    def health(self, timeout: float = 0.5) -> dict[str, Any] | None:
        """The replica's ``/health`` JSON, or None while it does not answer."""
        if not self.alive():
            return None
        try:
            with _NO_PROXY.open(f"http://127.0.0.1:{self.port}/health", timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 500 still carries the document
            with contextlib.suppress(ValueError, OSError):
                return json.loads(exc.read())
            return None
        except (OSError, ValueError):
            return None

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_all(replicas: Iterable[Replica], *, grace_s: float,
             abort: Callable[[], bool] = lambda: False) -> list[int]:
    """SIGTERM every replica (a graceful hand-over), SIGKILL what is left after ``grace_s``
    or as soon as ``abort()`` says so (a second Ctrl-C), then make sure no process of any
    replica's tree survives. Returns the pids that had to be killed."""
    replicas = list(replicas)
    for replica in replicas:
        replica.observe_family()
        replica.send(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not abort() and any(r.alive() for r in replicas):
        time.sleep(0.05)
    killed = []
    for replica in replicas:
        if replica.alive():
            assert replica.proc is not None
            killed.append(replica.proc.pid)
            replica.send(signal.SIGKILL)
        if replica.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                replica.proc.wait(5)
        replica.close_log()
    # Workers die with their supervisor and the fork server on its pipe's EOF: give them a
    # moment, then kill any straggler (psutil checks pid reuse by creation time).
    family = [p for r in replicas for p in r.family.values()]
    _, survivors = psutil.wait_procs([p for p in family if _running(p)], timeout=3)
    for proc in survivors:
        with contextlib.suppress(psutil.Error):
            proc.kill()
            killed.append(proc.pid)
    psutil.wait_procs(survivors, timeout=3)
    return killed


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
