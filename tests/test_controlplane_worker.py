"""The control-plane checker against kubesim and a local intake: real HTTP, real processes.

The job runs in a thread with a real ``WorkerContext`` on a real ``multiprocessing.Pipe``
(``Job``), or as a real worker process under ``WorkerPool`` (the SIGKILL test). Timing is
checked with deadlines and arrival times at the intake, never with fixed sleeps.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from intake_server import LocalIntake
from loguru import logger
from polling import wait_for

from kubesim.runner import KubeSim
from supervisor.lifecycle import WorkerPool
from workers import controlplane
from workers.backoff import Backoff
from workers.controlplane_probe import CRITICAL, UNKNOWN, Result, component_results
from workers.loop import WorkerContext, _Channel
from workers.settings import (
    ControlPlaneSettings,
    IntakeSettings,
    KubeSettings,
    WorkerSettings,
)

pytestmark = pytest.mark.timeout(120)

API_KEY = "cp0123456789abcdef0123456789abcd"
CHECK = "kube_apiserver_controlplane.up"
CHECKS_PATH = "/api/v1/check_run"
HOST = "test-host"
TAGS = ("env:test", "team:cp")
INTERVAL = 0.3
SIM_COMPONENTS = {"controller-manager", "etcd-0", "scheduler", "apiserver"}


def settings(sim: KubeSim, intake: LocalIntake | None, *, interval: float = INTERVAL,
             use_readyz: bool = False, kubeconfig: str | None = None,
             client_timeout: float = 10.0) -> WorkerSettings:
    return WorkerSettings(
        kube=KubeSettings(kubeconfig_path=kubeconfig or sim.kubeconfig,
                          client_timeout_s=client_timeout),
        intake=IntakeSettings(api_key=API_KEY if intake else "",
                              dd_url=intake.url if intake else "", hostname=HOST, tags=TAGS),
        controlplane=ControlPlaneSettings(interval_s=interval, use_readyz=use_readyz),
        heartbeat_interval_s=0.25,
    )


class Job:
    """``controlplane.run`` in a thread, with a real context on a real pipe."""

    def __init__(self, worker_settings: WorkerSettings) -> None:
        self.supervisor_end, worker_end = multiprocessing.Pipe()
        self.ctx = WorkerContext(name="controlplane", settings=worker_settings, token=None,
                                 channel=_Channel(worker_end))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="job", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            controlplane.run(self.ctx)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> float:
        """Set the stop flag; return how long the job took to return."""
        t0 = time.monotonic()
        self.ctx.stopping.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the job did not return after stopping was set"
        return time.monotonic() - t0

    def stat(self, key: str) -> float:
        return self.ctx._heartbeat().stats.get(key, 0.0)


@pytest.fixture
def intake() -> Iterator[LocalIntake]:
    with LocalIntake() as server:
        yield server


@pytest.fixture
def start() -> Iterator[Callable[[WorkerSettings], Job]]:
    jobs: list[Job] = []

    def make(worker_settings: WorkerSettings) -> Job:
        job = Job(worker_settings)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.stop()
        assert job.error is None, f"the job raised {job.error!r}"
        # This worker has no token: nothing ever goes up its pipe but heartbeats (sent by
        # the worker loop, not by the job).
        assert not job.supervisor_end.poll(), "the job sent something over its pipe"


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


def payloads(intake: LocalIntake) -> list[list[dict[str, Any]]]:
    """The service checks of each acknowledged request: one round each, in order."""
    return [r.body for r in intake.requests(CHECKS_PATH) if 200 <= r.status < 300]


def by_component(payload: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for check in payload:
        component = [t for t in check["tags"] if t.startswith("component:")]
        assert len(component) == 1, check
        out[component[0].removeprefix("component:")] = check
    return out


def latest_round(intake: LocalIntake, predicate: Callable[[dict[str, dict[str, Any]]], bool]
                 ) -> Callable[[], dict[str, dict[str, Any]] | None]:
    """A poller: the newest round whose checks (by component) satisfy ``predicate``."""
    def poll() -> dict[str, dict[str, Any]] | None:
        rounds = payloads(intake)
        if rounds:
            last = by_component(rounds[-1])
            if predicate(last):
                return last
        return None
    return poll


def arrivals(intake: LocalIntake) -> list[float]:
    return [r.at for r in intake.requests(CHECKS_PATH)]


def mean_gap(times: list[float]) -> float:
    return (times[-1] - times[0]) / (len(times) - 1)


def list_calls(sim: KubeSim, resource: str = "componentstatuses") -> int:
    return sum(c["requests"].get(f"list {resource}", 0) for c in sim.counts()["clients"])


# -- componentstatuses ----------------------------------------------------------------------


def test_healthy_components_reach_the_intake_in_the_agents_format(kubesim, intake, start):
    t0 = time.time()
    job = start(settings(kubesim, intake))
    wait_for(lambda: len(payloads(intake)) >= 2, what="two rounds")
    first = payloads(intake)[0]
    assert {c: s["status"] for c, s in by_component(first).items()} == dict.fromkeys(
        SIM_COMPONENTS, 0)
    for check in first:
        assert set(check) == {"check", "host_name", "timestamp", "status", "message", "tags"}
        assert check["check"] == CHECK
        assert check["host_name"] == HOST
        assert isinstance(check["timestamp"], int)
        assert t0 - 1 <= check["timestamp"] <= time.time() + 1
        component = check["tags"][0].removeprefix("component:")
        assert check["tags"] == [f"component:{component}", *TAGS]
    messages = {c: s["message"] for c, s in by_component(first).items()}
    assert messages == {"controller-manager": "ok", "scheduler": "ok", "apiserver": "ok",
                        "etcd-0": '{"health":"true","reason":""}'}

    request = intake.requests(CHECKS_PATH)[0]
    assert request.method == "POST"
    assert request.headers["dd-api-key"] == API_KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-encoding"] == "deflate"
    assert request.headers["user-agent"].startswith("kube-event-agent/")
    assert isinstance(request.body, list)
    assert intake.requests("/intake/") == []

    assert job.stat("controlplane_rounds_total") >= 2
    # The intake holds a body before the worker reads its answer: poll for the count.
    wait_for(lambda: job.stat("controlplane_service_checks_total") >= 8,
             what="8 service checks counted as acknowledged")
    assert job.stat("controlplane_failures_total") == 0
    assert job.ctx._heartbeat().healthy


def test_one_unhealthy_component_is_critical_with_its_message_logged_once(
        kubesim, intake, start, log_lines):
    error = 'Get "http://127.0.0.1:10259/healthz": dial tcp 127.0.0.1:10259: connection refused'
    start(settings(kubesim, intake))
    wait_for(lambda: payloads(intake), what="a first round")
    kubesim.set_component_health("scheduler", False, error)
    unhealthy = wait_for(latest_round(intake, lambda r: r["scheduler"]["status"] == 2),
                         what="scheduler CRITICAL")
    assert unhealthy["scheduler"]["message"] == error
    assert {c: s["status"] for c, s in unhealthy.items() if c != "scheduler"} == {
        "controller-manager": 0, "etcd-0": 0, "apiserver": 0}

    seen = len(payloads(intake))
    wait_for(lambda: len(payloads(intake)) >= seen + 3, what="three more rounds")
    assert sum("scheduler CRITICAL" in line for line in log_lines) == 1, log_lines

    kubesim.set_component_health("scheduler", True)
    healthy = wait_for(latest_round(intake, lambda r: r["scheduler"]["status"] == 0),
                       what="scheduler OK again")
    assert healthy["scheduler"]["message"] == "ok"
    wait_for(lambda: sum(line.startswith("control plane OK") for line in log_lines) == 2,
             what="the recovery logged")


def test_component_status_mapping_follows_the_agent():
    # kubesim has no switch for an Unknown condition; the Agent's rules, checked directly.
    listing = {"items": [
        {"metadata": {"name": "a"}, "conditions": [{"type": "Healthy", "status": "Unknown",
                                                    "message": "no answer"}]},
        {"metadata": {"name": "b"}, "conditions": [{"type": "Ready", "status": "True"}]},
        {"metadata": {"name": ""}, "conditions": [{"type": "Healthy", "status": "True"}]},
        {"metadata": {"name": "c"}},
        {"metadata": {"name": "d"}, "conditions": [{"type": "Healthy", "status": "False",
                                                    "message": "m"}]},
        {"metadata": {"name": "e"}, "conditions": [{"type": "Healthy", "status": "False",
                                                    "message": "m", "error": "e"}]},
    ]}  # fmt: skip
    assert component_results(listing) == [
        Result("a", UNKNOWN, "no answer"), Result("d", CRITICAL, "m"), Result("e", CRITICAL, "e")]
    assert component_results({"kind": "Status"}) == []


# -- the /readyz and /livez reading ------------------------------------------------------------


def assert_readyz_round(checks: dict[str, dict[str, Any]]) -> None:
    assert "etcd-0" not in checks  # nothing from componentstatuses
    for name in ("apiserver", "ping", "log", "etcd", "etcd-readiness", "informer-sync",
                 "shutdown", "autoregister-completion", "poststarthook/rbac/bootstrap-roles"):
        assert checks[name]["status"] == 0, name
        assert checks[name]["message"] == "ok", name
    for check in checks.values():
        assert check["check"] == CHECK
        assert check["host_name"] == HOST
        assert check["tags"][1:] == list(TAGS)


def test_componentstatuses_404_falls_back_to_readyz_and_livez(kubesim, intake, start,
                                                                log_lines):
    kubesim.inject_fault(status=404, path="/componentstatuses", verbs=["list"])
    start(settings(kubesim, intake))
    checks = wait_for(latest_round(intake, lambda r: "etcd" in r), what="a readyz round")
    assert_readyz_round(checks)
    assert sum("componentstatuses unavailable (404" in line for line in log_lines) == 1

    kubesim.set_component_health("etcd-0", False, "etcd down")
    failing = wait_for(latest_round(intake, lambda r: r["etcd"]["status"] == 2),
                       what="etcd CRITICAL")
    assert failing["etcd"]["message"] == (
        "/readyz: etcd failed: reason withheld; /livez: etcd failed: reason withheld")
    assert failing["etcd-readiness"]["status"] == 2
    assert failing["etcd-readiness"]["message"] == "/readyz: etcd-readiness failed: reason withheld"
    assert failing["apiserver"]["status"] == 2
    assert failing["apiserver"]["message"] == (
        "readyz check failed: etcd, etcd-readiness; livez check failed: etcd")
    assert failing["ping"]["status"] == 0

    # Fallen back, componentstatuses is not asked again every round.
    lists = list_calls(kubesim)
    seen = len(payloads(intake))
    wait_for(lambda: len(payloads(intake)) >= seen + 3, what="three more rounds")
    assert list_calls(kubesim) == lists


def test_componentstatuses_forbidden_by_rbac_falls_back_to_readyz(kubesim, intake, start):
    assert kubesim.features["rbac"], "kubesim runs without RBAC"
    kubesim.create("clusterroles", {"metadata": {"name": "health-only"}, "rules": [
        {"nonResourceURLs": ["/readyz", "/livez"], "verbs": ["get"]}]})
    kubesim.create("clusterrolebindings", {
        "metadata": {"name": "health-only"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "health-only"},
        "subjects": [{"kind": "ServiceAccount", "name": "datadog-agent",
                      "namespace": "default"}],
    })
    token = kubesim.issue_token("default", "datadog-agent")
    job = start(settings(kubesim, intake, kubeconfig=kubesim.kubeconfig_for(token)))
    checks = wait_for(latest_round(intake, lambda r: "etcd" in r), what="a readyz round")
    assert_readyz_round(checks)
    assert job.stat("controlplane_failures_total") == 0
    assert job.ctx._heartbeat().healthy  # it does its job, through /readyz
    forbidden = [c for c in kubesim.counts()["clients"]
                 if c["user"] == "system:serviceaccount:default:datadog-agent"]
    assert forbidden
    assert forbidden[0]["requests"].get("list componentstatuses") == 1


def test_use_readyz_never_lists_componentstatuses(kubesim, intake, start):
    start(settings(kubesim, intake, use_readyz=True))
    wait_for(lambda: len(payloads(intake)) >= 3, what="three rounds")
    for payload in payloads(intake):
        assert_readyz_round(by_component(payload))
    assert list_calls(kubesim) == 0


# -- failures ---------------------------------------------------------------------------------


def test_api_server_down_is_critical_for_apiserver_then_ok_again(kubesim, intake, start):
    job = start(settings(kubesim, intake, client_timeout=2.0))
    wait_for(lambda: payloads(intake), what="a first round")
    kubesim.stop_listening()
    down = wait_for(latest_round(intake, lambda r: r["apiserver"]["status"] == 2),
                    what="apiserver CRITICAL")
    assert set(down) == {"apiserver"}
    message = down["apiserver"]["message"]
    assert message.startswith("/api/v1/componentstatuses: API server unreachable: ")
    assert "refused" in message
    assert kubesim.admin_token not in message
    assert API_KEY not in message
    assert job.stat("controlplane_failures_total") >= 1
    assert job.ctx._heartbeat().healthy  # reporting an outage is doing the job

    kubesim.resume_listening()
    up = wait_for(latest_round(intake, lambda r: r["apiserver"]["status"] == 0),
                  what="apiserver OK again")
    assert set(up) == SIM_COMPONENTS


def test_a_timed_out_health_request_is_critical(kubesim, intake, start):
    kubesim.inject_fault(latency=3.0, path="^/readyz")
    start(settings(kubesim, intake, use_readyz=True, client_timeout=0.5))
    checks = wait_for(latest_round(intake, lambda r: r["apiserver"]["status"] == 2),
                      what="apiserver CRITICAL")
    assert checks["apiserver"]["message"].startswith("/readyz: API server unreachable: ")
    assert "timed out" in checks["apiserver"]["message"]
    assert checks["etcd"]["status"] == 0  # /livez still answered


def test_a_forbidden_health_endpoint_marks_the_worker_unhealthy(kubesim, intake, start):
    kubesim.inject_fault(status=403, path="^/(readyz|livez)")
    job = start(settings(kubesim, intake, use_readyz=True))
    checks = wait_for(latest_round(intake, lambda r: r["apiserver"]["status"] == 2),
                      what="apiserver CRITICAL")
    assert checks["apiserver"]["message"].startswith("/readyz, /livez: 403 Forbidden")
    wait_for(lambda: not job.ctx._heartbeat().healthy, what="unhealthy")
    assert "refused /readyz" in job.ctx._heartbeat().detail


def test_intake_forbidden_marks_unhealthy_and_stop_stays_prompt(kubesim, intake, start):
    intake.respond(403)
    job = start(settings(kubesim, intake))
    wait_for(lambda: not job.ctx._heartbeat().healthy, what="unhealthy")
    beat = job.ctx._heartbeat()
    assert "intake refused the API key" in beat.detail
    assert API_KEY not in beat.detail
    assert beat.stats.get("controlplane_undelivered_total", 0) == 4
    # The next round waits out the intake's forbidden pause (minutes): stop cuts it short.
    wait_for(lambda: job.stat("controlplane_rounds_skipped_total") >= 1, what="a skipped tick")
    assert job.stop() < 1.0


# -- schedule and backpressure ------------------------------------------------------------------


def test_slow_rounds_do_not_drift_the_schedule(kubesim, intake, start):
    # Each round takes about 0.15 s: sleeping the interval after each would make it 0.45 s.
    kubesim.inject_fault(latency=0.15, path="/componentstatuses")
    start(settings(kubesim, intake))
    wait_for(lambda: len(arrivals(intake)) >= 10, what="ten rounds")
    gap = mean_gap(arrivals(intake)[:10])
    assert 0.27 <= gap <= 0.4, gap


def test_a_slow_intake_skips_rounds_instead_of_queueing_them(kubesim, intake, start):
    slow = {"left": 3}

    def handler(request):
        if slow["left"] > 0:
            slow["left"] -= 1
            time.sleep(1.0)
        return 202

    intake.handler = handler
    job = start(settings(kubesim, intake))
    wait_for(lambda: len(arrivals(intake)) >= 7, what="seven rounds")
    times = arrivals(intake)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # One round at a time: each slow answer holds the next round back by the whole second.
    assert min(gaps[:2]) >= 0.95, gaps
    # Then back on the 0.3 s grid, with no burst of queued rounds.
    assert min(gaps[3:6]) >= 0.15, gaps
    assert job.stat("controlplane_rounds_skipped_total") >= 6
    assert job.stat("controlplane_rounds_total") <= len(arrivals(intake)) + 1


def test_stop_is_prompt_even_while_a_request_hangs(kubesim, intake, start):
    kubesim.inject_fault(latency=5.0, path="/componentstatuses")
    job = start(settings(kubesim, intake))
    wait_for(lambda: job.stat("controlplane_rounds_skipped_total") >= 1,
             what="a round stuck on the API server")
    assert job.stop() < 0.5
    assert payloads(intake) == []


def test_without_api_key_service_checks_are_json_lines_on_stdout(kubesim, start, capfd):
    job = start(settings(kubesim, None))
    out: list[str] = []

    def lines() -> list[str]:
        out.append(capfd.readouterr().out)
        return [line for line in "".join(out).splitlines() if line]

    wait_for(lambda: len(lines()) >= 8, what="two rounds on stdout")
    checks = [json.loads(line) for line in lines()]
    assert {c["tags"][0] for c in checks[:4]} == {f"component:{n}" for n in SIM_COMPONENTS}
    for check in checks:
        assert check["check"] == CHECK
        assert check["host_name"] == HOST
        assert check["status"] == 0
        assert check["tags"][1:] == list(TAGS)
    wait_for(lambda: job.stat("controlplane_service_checks_total") >= 8,
             what="8 service checks counted as written")


# -- under the supervisor's pool --------------------------------------------------------------


def test_sigkilled_worker_is_restarted_and_keeps_checking_on_schedule(kubesim, intake):
    progress: list[Any] = []
    pool = WorkerPool(token_source=lambda kind: None,
                      on_progress=lambda kind, token: progress.append(token),
                      backoff=Backoff(base_s=0.1, factor=2.0, cap_s=1.0, jitter=0.0),
                      sample_interval_s=0.1, release_forkserver=False)
    try:
        pool.start(settings(kubesim, intake), ["controlplane"])

        def running(not_pid: int | None = None) -> Any:
            w = next(w for w in pool.snapshot() if w.kind == "controlplane")
            return w if w.state == "running" and w.pid not in (None, not_pid) else None

        first = wait_for(running, what="the worker running")
        wait_for(lambda: len(payloads(intake)) >= 3, what="three rounds")
        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        second = wait_for(lambda: running(not_pid=first.pid), what="a new worker")
        assert second.restarts == 1

        def after_kill() -> list[float]:
            return [r.at for r in intake.requests(CHECKS_PATH)
                    if r.at > killed_at and 200 <= r.status < 300]

        wait_for(lambda: len(after_kill()) >= 8, what="eight rounds from the new worker")
        gap = mean_gap(after_kill()[:8])
        assert 0.27 <= gap <= 0.45, gap
        assert by_component(payloads(intake)[-1]).keys() == SIM_COMPONENTS
        stats = wait_for(lambda: (s := running().stats).get("controlplane_rounds_total") and s,
                         what="heartbeat stats of the new worker")
        assert stats["controlplane_service_checks_total"] >= 4
        assert progress == []
    finally:
        pool.close(grace_s=2.0)
