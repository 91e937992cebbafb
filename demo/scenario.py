"""Setting the stage and striking it: ``run_demo`` from the manifests check to the last process.

Set-up: the manifests are read first (a broken checkout fails before anything starts),
then kubesim, the intake, the manifests applied, the ServiceAccount's kubeconfig and the
replicas; the story itself is ``demo.phases.Run``. Ctrl-C (or SIGTERM) at any point raises
``Interrupted`` at the next wait, and the clean-up always runs: SIGTERM to every replica,
SIGKILL to what is left after a grace (at once on a second Ctrl-C), then the intake and
kubesim stopped. No process of the demo survives it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TextIO

import psutil
from loguru import logger

from demo.bootstrap import (
    AGENT_NAMESPACE,
    AGENT_SERVICE_ACCOUNT,
    apply_manifests,
    load_manifests,
    make_credentials,
)
from demo.control import EXIT_FAILED, EXIT_INTERRUPTED, Interrupted, Options, Stopper
from demo.intake import DemoIntake
from demo.observe import Monitor
from demo.phases import Run
from demo.replicas import AgentEnv, Replica, free_port, stop_all
from demo.view import make_view
from kubesim.runner import KubeSim

__all__ = ["run_demo"]


STARTED_ENV = "KUBE_EVENT_AGENT_DEMO_STARTED"
"""Set by ``kube-event-agent demo`` (epoch seconds) before it becomes ``python -m demo``;
``supervisor.cli.DEMO_STARTED_ENV`` is its twin (neither package may import the other)."""


def _command_started() -> float:
    """When the command started, imports included, as a user sees it: the time the CLI
    passed on, else this process's creation (``python -m demo`` run directly)."""
    passed = os.environ.pop(STARTED_ENV, "")
    with contextlib.suppress(ValueError):
        return float(passed)
    return psutil.Process().create_time()


def run_demo(options: Options, stream: TextIO | None = None) -> int:
    """Run the whole demo; returns the exit code. Raises ``ManifestError`` (exit 2) before
    starting anything if the manifests are missing or unreadable."""
    manifests = load_manifests(options.manifests)
    started = time.monotonic() - max(0.0, time.time() - _command_started())
    log_dir = Path(tempfile.mkdtemp(prefix="kube-event-agent-demo-"))
    _quiet_libraries(log_dir)
    stopper = Stopper()
    stopper.install()
    view = make_view(
        f"kube-event-agent demo: {options.replicas} replicas as ServiceAccount "
        f"{AGENT_NAMESPACE}/{AGENT_SERVICE_ACCOUNT}, lease {options.lease_s}s, "
        f"{options.rate:g} events/s for {options.duration_s:g}s; logs in {log_dir}",
        started, stream)
    sim = KubeSim(kubeconfig_path=log_dir / "kubeconfig-admin")
    intake = DemoIntake()
    replicas: list[Replica] = []
    monitor: Monitor | None = None
    run: Run | None = None
    code = EXIT_FAILED
    try:
        sim.start()
        intake.start()
        view.note(f"kubesim serving {sim.url}; intake listening on {intake.url}")
        created = apply_manifests(sim, manifests)
        view.note(f"applied {options.manifests}: {', '.join(created)}")
        credentials = make_credentials(sim)
        env = AgentEnv(kubeconfig=credentials.kubeconfig, intake_url=intake.url,
                       lease_s=options.lease_s, shutdown_timeout_s=options.shutdown_timeout_s)
        for i in range(options.replicas):
            name, port = f"agent-{i}", free_port()
            replicas.append(Replica(name, port, env.for_replica(name, port), log_dir))
        for replica in replicas:
            replica.start()
        view.note(f"started {', '.join(f'{r.name} (pid {r.pid})' for r in replicas)} "
                  f"as {credentials.identity}")
        monitor = Monitor(sim, replicas).start()
        run = Run(options=options, sim=sim, intake=intake, replicas=replicas, monitor=monitor,
                  view=view, stopper=stopper, started=started, log_dir=log_dir)
        code = run.play()
        if options.keep:
            run.keep_running()
    except Interrupted:
        view.note("interrupted: stopping everything (Ctrl-C again to kill at once)")
        code = code if run is not None and run.summarised else EXIT_INTERRUPTED
    finally:
        if run is not None:
            run.stop_generator()
        if monitor is not None:
            monitor.stop()
        killed = stop_all(replicas, grace_s=options.shutdown_timeout_s + 2,
                          abort=lambda: stopper.force)
        if killed:
            view.note(f"had to SIGKILL pids {killed}")
        intake.stop()
        sim.stop()
        view.note(f"stopped; agent logs kept in {log_dir}")
        view.close()
    return code


def _quiet_libraries(log_dir: Path) -> None:
    """kubesim's and the clients' log lines go to a file, not across the live view."""
    logger.remove()
    logger.add(log_dir / "kubesim.log", level="INFO")
    logging.basicConfig(filename=log_dir / "demo-clients.log", level=logging.WARNING)
