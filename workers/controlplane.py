"""The control-plane checker worker: the control plane's health as Datadog service checks.

Every ``interval_s`` one round reads componentstatuses (or /readyz and /livez, see
``workers.controlplane_probe``) and submits one ``kube_apiserver_controlplane.up`` service
check per component to the intake (``/api/v1/check_run``; no api_key: JSON lines on
stdout): tags ``component:<name>`` plus the global tags, ``host_name`` the agent's hostname,
``timestamp`` the time of the reading.

Rounds are scheduled on the monotonic clock at ``start + k * interval``, so a slow round
never drifts the schedule. A round runs in a thread of its own while the job's thread keeps
the schedule: a tick that finds the previous round still running (a slow API server, or the
intake retrying with backoff) is skipped and counted, never queued, so an intake outage
costs one pending payload, not one per tick. Stop is prompt: the job returns as soon as
``ctx.stopping`` is set; a round still waiting on the API server is abandoned (nothing is
lost: the next leader's first round reads the control plane afresh).

Heartbeat counters: ``controlplane_rounds_total``, ``controlplane_rounds_skipped_total``,
``controlplane_service_checks_total`` (acknowledged by the intake), ``controlplane_failures_total``
(API requests that failed or timed out), ``controlplane_undelivered_total`` (service checks the
intake skipped or refused), plus the intake client's own ``intake_*`` counters.
Logs: one line per change of state (statuses, fallback, delivery, skipping), not per round.
This worker never sends ``Progress``: it has no token.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING

from loguru import logger

from workers import logcontrol, payloads
from workers.controlplane_probe import (
    OK,
    STATUS_NAMES,
    Observation,
    Prober,
    Result,
    client_failure,
)
from workers.intake import Delivery, IntakeClient, Outcome, user_agent
from workers.kubeapi import KubeApi

if TYPE_CHECKING:
    from workers.loop import WorkerContext

__all__ = ["CHECK", "MIN_INTERVAL_S", "run"]

CHECK = "kube_apiserver_controlplane.up"
"""The Datadog Agent's ``KubeControlPaneCheck``."""
MIN_INTERVAL_S = 0.1
_MAX_MESSAGE = 500


def run(ctx: WorkerContext) -> None:
    """The job: check the control plane every ``interval_s`` until ``ctx.stopping`` is set."""
    _Checker(ctx).run()


class _Checker:
    """The schedule (job thread) and the rounds (one round thread at a time)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.interval_s = settings.controlplane.interval_s
        if not self.interval_s >= MIN_INTERVAL_S:
            logger.warning("controlplane_check_interval {!r} s is too short; using {} s",
                           self.interval_s, MIN_INTERVAL_S)
            self.interval_s = MIN_INTERVAL_S
        self.host = settings.intake.hostname or socket.gethostname()
        self.tags = tuple(settings.intake.tags)
        self.intake = IntakeClient(settings.intake)
        self._prober: Prober | None = None
        self._round_thread: threading.Thread | None = None
        self._skipped = 0
        """Ticks skipped in a row because a round was still running."""
        # Last logged states (round thread only), so each change is logged once.
        self._statuses: Hashable = None
        self._fallback = False
        self._delivered = True
        self._crash = ""

    # -- the schedule (job thread) ---------------------------------------------------------

    def run(self) -> None:
        logger.info("checking the control plane every {:g} s ({})", self.interval_s,
                    "/readyz and /livez" if self.ctx.settings.controlplane.use_readyz
                    else "componentstatuses")
        due = time.monotonic()
        while not self.ctx.stopping.wait(max(0.0, due - time.monotonic())):
            now = time.monotonic()
            if self._round_thread is not None and self._round_thread.is_alive():
                self._skip(now)
            else:
                self._start_round()
            # Stay on the grid start + k * interval; ticks slept through count as skipped.
            missed = int((now - due) // self.interval_s)
            if missed > 0:
                self.ctx.count("controlplane_rounds_skipped_total", missed)
            due += (missed + 1) * self.interval_s
        self._close()

    def _skip(self, now: float) -> None:
        self._skipped += 1
        self.ctx.count("controlplane_rounds_skipped_total")
        if self._skipped == 1:
            logger.warning("the previous round is still running (slow API server or intake "
                           "retrying): skipping rounds until it ends")

    def _start_round(self) -> None:
        if self._skipped:
            logger.info("rounds back on schedule after {} skipped", self._skipped)
            self._skipped = 0
        self.ctx.count("controlplane_rounds_total")
        self._round_thread = threading.Thread(target=self._round, name="controlplane-round",
                                              daemon=True)
        self._round_thread.start()

    def _close(self) -> None:
        if self._round_thread is not None and self._round_thread.is_alive():
            return  # the round still uses the clients; the process exit ends them
        self.intake.close()
        if self._prober is not None:
            self._prober.api.close()

    # -- one round (round thread) ----------------------------------------------------------

    def _round(self) -> None:
        try:
            observation = self._observe()
            self._note(observation)
            delivery = self._deliver(observation)
            self._report_health(observation, delivery)
            if self._crash:
                logger.info("rounds complete again")
                self._crash = ""
        except Exception as exc:  # a bug must not end the checks: the next tick tries again
            self.ctx.count("controlplane_round_errors_total")
            detail = logcontrol.mask(f"{type(exc).__name__}: {exc}")
            if detail != self._crash:
                logger.opt(exception=exc).error("control-plane round failed: {}", detail)
                self._crash = detail

    def _observe(self) -> Observation:
        if self._prober is None:
            settings = self.ctx.settings
            try:
                api = KubeApi.from_settings(settings.kube, user_agent=user_agent())
            except Exception as exc:  # missing kubeconfig, no in-cluster token, bad file
                return client_failure(f"cannot configure the Kubernetes client: "
                                      f"{type(exc).__name__}: {exc}")
            self._prober = Prober(api, use_readyz=settings.controlplane.use_readyz)
        return self._prober.probe()

    def _note(self, observation: Observation) -> None:
        """Count the round's failures; log what changed since the last round."""
        if observation.failures:
            self.ctx.count("controlplane_failures_total", observation.failures)
        fallen_back = self._prober is not None and self._prober.fallen_back
        if fallen_back != self._fallback:
            self._fallback = fallen_back
            if fallen_back:
                logger.warning("componentstatuses unavailable ({}): reading /readyz and /livez "
                               "instead", logcontrol.mask(observation.fallback))
            else:
                logger.info("componentstatuses answers again: using it")
        state = (observation.source,
                 tuple(sorted((r.component, r.status) for r in observation.results)))
        if state == self._statuses:
            return
        self._statuses = state
        bad = [r for r in observation.results if r.status != OK]
        if not bad:
            logger.info("control plane OK: {} component(s) from {}", len(observation.results),
                        observation.source)
            return
        logger.warning("control plane from {}: {}", observation.source, "; ".join(
            f"{r.component} {STATUS_NAMES.get(r.status, r.status)}"
            + (f" ({logcontrol.mask(r.message)})" if r.message else "") for r in bad))

    def _deliver(self, observation: Observation) -> Delivery:
        now = time.time()
        checks = [self._service_check(r, now) for r in observation.results]
        delivery = self.intake.deliver_service_checks(checks, self.ctx.stopping)
        if delivery.acknowledged:
            self.ctx.count("controlplane_service_checks_total", delivery.acknowledged)
        undelivered = len(checks) - delivery.acknowledged
        if undelivered and delivery.outcome is not Outcome.STOPPED:
            self.ctx.count("controlplane_undelivered_total", undelivered)
        self.intake.report(self.ctx)
        delivered = delivery.outcome is Outcome.ACKNOWLEDGED
        if delivered != self._delivered and delivery.outcome is not Outcome.STOPPED:
            self._delivered = delivered
            if delivered:
                logger.info("service checks are delivered again")
            else:
                logger.warning("service checks not delivered ({}): {}",
                               delivery.outcome.value, delivery.detail)
        return delivery

    def _service_check(self, result: Result, timestamp: float) -> dict[str, object]:
        return payloads.service_check(
            CHECK, result.status, host=self.host,
            message=logcontrol.mask(result.message)[:_MAX_MESSAGE],
            tags=(f"component:{result.component}", *self.tags), timestamp=timestamp,
        )  # fmt: skip

    def _report_health(self, observation: Observation, delivery: Delivery) -> None:
        problems = []
        if observation.unable:
            problems.append(observation.unable)
        if delivery.outcome is Outcome.FORBIDDEN:
            problems.append(f"the intake refused the API key: {delivery.detail}")
        self.ctx.set_health(not problems, "; ".join(problems))
