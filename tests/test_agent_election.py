"""Supervisor processes electing a leader against kubesim: real processes, real signals."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from agent_harness import Replicas, wait_for
from prometheus_client.parser import text_string_to_metric_families

from kubesim.runner import KubeSim
from supervisor.elector import ElectionTiming
from supervisor.locks import LEADER_ANNOTATION, LeaderRecord

LEASE = 2.0
TIMING = ElectionTiming.from_lease(LEASE)
SECRET = "0123456789abcdef0123456789abcdef"
# Process start-up (imports, first request) on a loaded 2-core box.
STARTUP = 15.0


def lock_record(sim: KubeSim) -> LeaderRecord:
    obj = sim.get("endpoints", "datadog-leader-election", "default")
    assert obj is not None
    return LeaderRecord.from_annotation(obj["metadata"]["annotations"][LEADER_ANNOTATION])


@pytest.fixture
def fleet(kubesim: KubeSim, tmp_path: Path):
    with Replicas(kubesim, tmp_path, env={"DD_API_KEY": SECRET}) as replicas:
        yield replicas


def test_three_replicas_elect_exactly_one_leader(kubesim: KubeSim, fleet: Replicas) -> None:
    fleet.start(3)
    leader = fleet.wait_for_leader(STARTUP)
    record = lock_record(kubesim)
    assert record.holder_identity.startswith(leader.name + "-")
    assert record.lease_duration_seconds == 2
    # Followers know who leads; over several retry periods nobody else claims the lock.
    for _ in range(8):
        time.sleep(TIMING.retry_period_s)  # observation cadence, not synchronisation
        assert [r.name for r in fleet.leaders()] == [leader.name]
    for replica in fleet:
        state = replica.state()
        assert state is not None
        assert state["leader"] == record.holder_identity
    assert lock_record(kubesim).leader_transitions == record.leader_transitions


def test_sigkilled_leader_is_replaced_within_lease_plus_retry(
    kubesim: KubeSim, fleet: Replicas
) -> None:
    fleet.start(3)
    leader = fleet.wait_for_leader(STARTUP)
    wait_for(lambda: all(r.state() for r in fleet), STARTUP, "every replica's health")
    before = lock_record(kubesim)
    leader.kill()
    killed = time.monotonic()
    rest = [r for r in fleet if r is not leader]
    new = fleet.wait_for_leader(LEASE + TIMING.retry_period_s + 3, among=rest)
    took = time.monotonic() - killed
    after = lock_record(kubesim)
    assert after.holder_identity.startswith(new.name + "-")
    assert after.leader_transitions == before.leader_transitions + 1
    # Not before the lease could have expired by the followers' own clocks.
    assert took > LEASE * 0.5, f"took over after {took:.2f}s"


def test_sigterm_hands_over_within_about_one_retry_period(
    kubesim: KubeSim, fleet: Replicas
) -> None:
    fleet.start(3, env={"DD_LEADER_LEASE_DURATION": "8"})
    leader = fleet.wait_for_leader(STARTUP)
    wait_for(lambda: all(r.state() for r in fleet), STARTUP, "every replica's health")
    rest = [r for r in fleet if r is not leader]
    leader.signal(signal.SIGTERM)
    sent = time.monotonic()
    assert leader.wait(15) == 0
    new = fleet.wait_for_leader(8, among=rest)
    took = time.monotonic() - sent
    # An 8 s lease: without the release a follower would wait 8 s; with it, about nothing.
    assert took < 2.0 + 2.0, f"hand-over took {took:.2f}s"
    assert lock_record(kubesim).holder_identity.startswith(new.name + "-")
    assert "released endpoints default/datadog-leader-election" in leader.logs()


def test_bad_config_exits_2_before_any_api_call(kubesim: KubeSim, fleet: Replicas) -> None:
    kubesim.reset_counts()
    replica = fleet.add(env={"DD_LEADER_LEASE_DURATION": "-5"}).start()
    assert replica.wait(30) == 2
    err = replica.logs().strip().splitlines()
    assert len(err) == 1, err
    assert "DD_LEADER_LEASE_DURATION" in err[0]
    assert "positive integer" in err[0]
    assert kubesim.counts()["total"] == 0


def test_bad_datadog_yaml_exits_2(kubesim: KubeSim, tmp_path: Path) -> None:
    with Replicas(kubesim, tmp_path, datadog_yaml="leader_election: [unclosed\n") as fleet:
        replica = fleet.add().start()
        assert replica.wait(30) == 2
        (line,) = replica.logs().strip().splitlines()
        assert "datadog.yaml" in line


def test_sighup_reload_valid_and_broken(kubesim: KubeSim, tmp_path: Path) -> None:
    with Replicas(kubesim, tmp_path, datadog_yaml="log_level: debug\n") as fleet:
        replica = fleet.add().start()
        fleet.wait_for_leader(STARTUP)
        assert replica.config_path is not None
        replica.config_path.write_text("log_level: info\ntoken_checkpoint_interval: 2\n")
        replica.signal(signal.SIGHUP)
        wait_for(lambda: (replica.state() or {}).get("config", {}).get("last_reload_ok"),
                 10, "a successful reload")
        replica.config_path.write_text("token_checkpoint_interval: -1\n")
        replica.signal(signal.SIGHUP)
        wait_for(lambda: (replica.state() or {}).get("config", {}).get("last_reload_ok")
                 is False, 10, "a refused reload")
        state = replica.state()
        assert state is not None
        assert "token_checkpoint_interval" in state["config"]["last_reload_error"]
        assert "config-reload" in state["Unhealthy"]
        # Still running, still leading, on the old configuration.
        assert replica.alive()
        assert replica.is_leader()
        assert "reload refused, keeping the running configuration" in replica.logs()
        assert replica.terminate() == 0


def test_health_endpoints_and_metrics(kubesim: KubeSim, fleet: Replicas) -> None:
    a, b = fleet.start(2)
    leader = fleet.wait_for_leader(STARTUP)
    follower = b if leader is a else a
    wait_for(lambda: follower.health("/ready")[0] == 200, STARTUP, "follower ready")
    assert leader.health("/live")[0] == 200
    assert leader.health("/ready")[0] == 200
    status, body = leader.health("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body)}
    leading = {s.labels.get("identity"): s.value
               for s in families["kube_event_agent_is_leader"].samples}
    assert list(leading.values()) == [1.0]
    state = follower.state()
    assert state is not None
    assert state["role"] == "follower"
    assert state["leader"].startswith(leader.name + "-")
    assert follower.health("/nope")[0] == 404


def test_no_secret_in_any_log_line(kubesim: KubeSim, fleet: Replicas) -> None:
    replica = fleet.add().start()
    fleet.wait_for_leader(STARTUP)
    replica.signal(signal.SIGHUP)
    wait_for(lambda: "reload" in replica.logs(), 10, "the reload log line")
    assert replica.terminate() == 0
    logs = replica.logs()
    assert "kube-event-agent" in logs
    assert SECRET not in logs


def test_unreadable_token_blocks_workers_not_signals(kubesim: KubeSim, fleet: Replicas) -> None:
    kubesim.inject_fault(status=500, path="configmaps/datadogtoken", verbs=["get"])
    replica = fleet.add().start()
    fleet.wait_for_leader(STARTUP)
    wait_for(lambda: "checkpoint" in ((replica.state() or {}).get("Unhealthy") or []), 10,
             "checkpoint reported unhealthy while the token cannot be read")
    assert "cannot read the token yet" in replica.logs()
    replica.signal(signal.SIGTERM)
    assert replica.wait(10) == 0
    assert lock_record(kubesim).holder_identity == ""
