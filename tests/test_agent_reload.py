"""SIGHUP reloads applied to a running leader: only what changed is touched."""

from __future__ import annotations

import signal
from pathlib import Path

from agent_harness import Replica, Replicas, wait_for

from kubesim.runner import KubeSim
from supervisor.locks import LEADER_ANNOTATION, LeaderRecord

STARTUP = 20.0
BASE = {
    "DD_WORKER_HEARTBEAT_INTERVAL": "0.5",
    "DD_WORKER_RESTART_BACKOFF_MIN": "0.2",
    "DD_TOKEN_CHECKPOINT_INTERVAL": "0.5",
}


def record(sim: KubeSim, name: str) -> LeaderRecord | None:
    obj = sim.get("endpoints", name, "default")
    if obj is None:
        return None
    return LeaderRecord.from_annotation(obj["metadata"]["annotations"][LEADER_ANNOTATION])


def reload_with(replica: Replica, text: str) -> None:
    assert replica.config_path is not None
    before = (replica.state() or {}).get("config", {}).get("last_reload_age_s")
    replica.config_path.write_text(text)
    replica.signal(signal.SIGHUP)

    def reloaded() -> bool:
        config = (replica.state() or {}).get("config", {})
        age = config.get("last_reload_age_s")
        return config.get("last_reload_ok") is True and (before is None or age < before)

    wait_for(reloaded, 10, "the reload to be applied")


def test_worker_setting_change_restarts_only_that_worker(kubesim: KubeSim, tmp_path: Path):
    yaml = ("collect_kubernetes_events: true\ncollect_controlplane_checks: true\n"
            "controlplane_check_interval: 1\n")
    with Replicas(kubesim, tmp_path, env=BASE, datadog_yaml=yaml) as fleet:
        replica = fleet.add().start()
        fleet.wait_for_leader(STARTUP)
        pids = wait_for(lambda: p if len(p := replica.worker_pids()) == 2 else None,
                        STARTUP, "both workers")
        lock = record(kubesim, "datadog-leader-election")
        reload_with(replica, yaml.replace("controlplane_check_interval: 1",
                                          "controlplane_check_interval: 2"))
        new = wait_for(
            lambda: (p := replica.worker_pids()).get("controlplane") not in
            (None, pids["controlplane"]) and p, 10, "a restarted control-plane worker",
        )
        assert new["events"] == pids["events"], "the events worker must not be restarted"
        after = record(kubesim, "datadog-leader-election")
        assert after is not None
        assert lock is not None
        assert after.holder_identity == lock.holder_identity
        assert after.leader_transitions == lock.leader_transitions


def test_log_level_only_change_restarts_nothing(kubesim: KubeSim, tmp_path: Path):
    yaml = "collect_controlplane_checks: true\nlog_level: info\n"
    with Replicas(kubesim, tmp_path, env=BASE, datadog_yaml=yaml) as fleet:
        replica = fleet.add(env={"DD_LOG_LEVEL": ""}).start()
        fleet.wait_for_leader(STARTUP)
        pid = wait_for(lambda: replica.worker_pids().get("controlplane"), STARTUP, "worker")
        reload_with(replica, yaml.replace("log_level: info", "log_level: debug"))
        # Debug lines now come from the worker process too, at once.
        wait_for(lambda: " DEBUG " in replica.logs() and "controlplane[" in replica.logs(),
                 10, "debug lines")
        assert replica.worker_pids().get("controlplane") == pid


def test_lock_rename_releases_the_old_lock_and_campaigns_on_the_new(
    kubesim: KubeSim, tmp_path: Path
) -> None:
    yaml = "collect_controlplane_checks: true\nleader_lease_name: lock-a\n"
    with Replicas(kubesim, tmp_path, env=BASE, datadog_yaml=yaml) as fleet:
        replica = fleet.add().start()
        fleet.wait_for_leader(STARTUP)
        wait_for(lambda: replica.worker_pids().get("controlplane"), STARTUP, "worker")
        first = record(kubesim, "lock-a")
        assert first is not None
        assert first.holder_identity.startswith(replica.name)
        reload_with(replica, yaml.replace("lock-a", "lock-b"))
        wait_for(lambda: (r := record(kubesim, "lock-b")) and r.holder_identity, 10,
                 "the new lock to be held")
        released = record(kubesim, "lock-a")
        assert released is not None
        assert released.holder_identity == ""
        held = record(kubesim, "lock-b")
        assert held is not None
        assert held.holder_identity == first.holder_identity
        wait_for(lambda: replica.worker_pids().get("controlplane"), STARTUP,
                 "workers running again under the new lock")
        assert replica.is_leader()
