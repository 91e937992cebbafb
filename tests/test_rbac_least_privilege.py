"""Least privilege, shown: the agent as ServiceAccount default/datadog-agent under RBAC.

Each *run* is one kubesim (RBAC enforced for ServiceAccount tokens) with manifests/rbac
applied (possibly changed), one agent replica authenticated with the account's token, a
LocalIntake, and Events created through the admin API while it runs:

- ``baseline``: the manifests as they are. The agent elects, delivers events, checkpoints
  the token, sends service checks, makes every kind of request it has (counted by kubesim),
  and is refused nothing.
- one run per *grant* (a verb of a rule) of the default manifests, with only that grant
  removed: exactly the requests that need it are refused, and a specific, logged feature
  fails (never leads, fenced, no events, checkpoint unhealthy, fallback to /readyz...).
  The nonResourceURLs rule is the one exemption: on a real cluster (and in kubesim)
  system:discovery and system:public-info-viewer grant those URLs to every authenticated
  user, so its run shows that nothing is refused without it.
- the ConfigMap and Lease lock variants, as they are: elect, deliver, checkpoint, no refusal.

Refusals are read from the server's own authorization decisions: kubesim's counters have no
status codes, so the test wraps ``Cluster.authorize`` to note every denial (the decisions
themselves are kubesim's, unchanged), and it scans the agent's logs too.
All runs go in parallel; each is stopped once its outcome is clear (plus a settling time).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_harness import Replica, Replicas
from intake_server import LocalIntake

from kubesim.counting import resource_label
from kubesim.runner import KubeSim
from supervisor.checkpoint import TOKEN_CONFIGMAP, TOKEN_KEY

RBAC = Path(__file__).resolve().parents[1] / "manifests" / "rbac"
BASE = ("serviceaccount.yaml", "clusterrole.yaml", "role-token.yaml", "role-leader-election.yaml")
VARIANTS = {"configmap": "variants/leader-election-configmap.yaml",
            "lease": "variants/leader-election-lease.yaml"}
SA = ("default", "datadog-agent")
SA_USER = "system:serviceaccount:default:datadog-agent"
LOCK = "datadog-leader-election"
API_KEY = "0123456789abcdef0123456789abcdef"
DEADLINE_S = 70.0
SETTLE_S = 3.0
"""Observation after a run's outcome is clear, so that "never" means a few retry periods."""
TICK_S = 0.4
FORBIDDEN = re.compile(r"\b403\b|forbidden", re.IGNORECASE)
LEASE_LOCK = f"leases.coordination.k8s.io/{LOCK}"


# -- the manifests as data ----------------------------------------------------------------


def load(files: tuple[str, ...]) -> list[dict[str, Any]]:
    return [d for f in files for d in yaml.safe_load_all((RBAC / f).read_text()) if d]


def _target(rule: dict[str, Any]) -> str:
    if "nonResourceURLs" in rule:
        return ",".join(rule["nonResourceURLs"])
    groups = [g for g in rule["apiGroups"] if g]
    what = ",".join(f"{r}.{groups[0]}" if groups else r for r in rule["resources"])
    return what + ("/" + ",".join(rule["resourceNames"]) if rule.get("resourceNames") else "")


def grants(docs: list[dict[str, Any]]) -> list[str]:
    """Every (role, verb, target) the documents grant: ``"<role>: <verb> <target>"``."""
    return [f"{d['metadata']['name']}: {verb} {_target(rule)}"
            for d in docs if d["kind"] in ("Role", "ClusterRole")
            for rule in d["rules"] for verb in rule["verbs"]]


def without(docs: list[dict[str, Any]], grant: str) -> list[dict[str, Any]]:
    """The documents with one grant removed (and its rule, if that was its last verb)."""
    docs = copy.deepcopy(docs)
    role, _, rest = grant.partition(": ")
    verb, _, target = rest.partition(" ")
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole") and doc["metadata"]["name"] == role:
            for rule in doc["rules"]:
                if _target(rule) == target and verb in rule["verbs"]:
                    rule["verbs"].remove(verb)
                    doc["rules"] = [r for r in doc["rules"] if r["verbs"]]
                    return docs
    raise AssertionError(f"no grant {grant!r} in the manifests")


# -- the runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    removed: str | None = None
    """The grant taken out of the default manifests (None: as they are)."""
    denied: frozenset[str] = frozenset()
    """Exactly the requests refused (``"<verb> <resource>"``, kubesim's counter labels)."""
    evidence: tuple[str, ...] = ()
    """Regexes that must each match a line of the agent's log."""
    leads: bool | None = True
    events: bool | None = True
    """Events created during the run reach the intake (None: either way)."""
    checks: bool | None = True
    checkpoint: bool | None = True
    """The token ConfigMap holds a token written by the agent."""
    unhealthy: tuple[str, str] | None = None
    """(component, regex of its problem) that /health must show."""
    needs: frozenset[str] = frozenset()
    """Requests the agent must have made (proof that the path was exercised)."""
    seed_token: bool = False
    lock: str = "endpoints"
    env: dict[str, str] = field(default_factory=dict)


ENDPOINTS_NEEDS = frozenset({"create endpoints", "get endpoints", "update endpoints",
                             "watch endpoints"})
WORKER_NEEDS = frozenset({"list events", "watch events", "list componentstatuses"})
TOKEN_NEEDS = frozenset({"get configmaps", "create configmaps", "update configmaps"})
CR, TOKEN_ROLE, LOCK_ROLE = "datadog-agent", "datadog-agent-token", "datadog-agent-leader-election"
EP = f"endpoints default/{LOCK}"

CASES = [
    Case("baseline", needs=ENDPOINTS_NEEDS | WORKER_NEEDS | TOKEN_NEEDS),
    Case("no-list-events", f"{CR}: list events", frozenset({"list events"}),
         (r'events\[\d+\] .*403 Forbidden: events is forbidden: .*cannot list resource "events"',),
         events=False, checkpoint=False, unhealthy=("worker-events", "403 Forbidden")),
    Case("no-watch-events", f"{CR}: watch events", frozenset({"watch events"}),
         (r'events\[\d+\] .*403 Forbidden: events is forbidden: .*cannot watch resource "events"',),
         events=False, checkpoint=None, unhealthy=("worker-events", "403 Forbidden")),
    Case("no-list-componentstatuses", f"{CR}: list componentstatuses",
         frozenset({"list componentstatuses"}),
         (r"componentstatuses unavailable \(403 Forbidden: .*\): reading /readyz and /livez",),
         needs=frozenset({"get /readyz", "get /livez"})),
    # Exempt: system:discovery / system:public-info-viewer grant these to every
    # authenticated user, so removing the rule refuses nothing (shown with /readyz in use).
    Case("no-nonresource-urls-exempt", f"{CR}: get /readyz,/livez,/version",
         needs=frozenset({"get /readyz", "get /livez"}),
         env={"DD_CONTROLPLANE_USE_READYZ": "true"}),
    Case("no-get-token", f"{TOKEN_ROLE}: get configmaps/{TOKEN_CONFIGMAP}",
         frozenset({"get configmaps"}),
         (r'cannot read the token yet \(403 Forbidden: configmaps "datadogtoken" is forbidden',),
         events=False, checks=False, checkpoint=False),
    Case("no-update-token", f"{TOKEN_ROLE}: update configmaps/{TOKEN_CONFIGMAP}",
         frozenset({"update configmaps"}),
         (r'could not persist token .*403 Forbidden: configmaps "datadogtoken" is forbidden',),
         checkpoint=False, unhealthy=("checkpoint", "last token write failed"), seed_token=True),
    Case("no-create-configmaps", f"{TOKEN_ROLE}: create configmaps",
         frozenset({"create configmaps"}),
         (r"could not persist token .*403 Forbidden: configmaps is forbidden: .*cannot create",),
         checkpoint=False, unhealthy=("checkpoint", "last token write failed")),
    Case("no-get-lock", f"{LOCK_ROLE}: get endpoints/{LOCK}", frozenset({"get endpoints"}),
         (rf"get {EP} failed: 403 Forbidden",),
         leads=False, events=False, checks=False, checkpoint=False),
    Case("no-update-lock", f"{LOCK_ROLE}: update endpoints/{LOCK}",
         frozenset({"update endpoints"}),
         (rf"update {EP} failed: 403 Forbidden", rf"failed to renew {EP} .*fencing"),
         events=None, checks=None, checkpoint=None),
    Case("no-watch-lock", f"{LOCK_ROLE}: watch endpoints/{LOCK}", frozenset({"watch endpoints"}),
         (rf"cannot watch {EP} \(403 Forbidden: .*\); polling every",)),
    Case("no-create-lock", f"{LOCK_ROLE}: create endpoints", frozenset({"create endpoints"}),
         (rf"create {EP} failed: 403 Forbidden",),
         leads=False, events=False, checks=False, checkpoint=False),
    Case("variant-configmap-lock", lock="configmap", seed_token=True,
         needs=frozenset({"get configmaps", "update configmaps", "watch configmaps",
                          "create configmaps"}) | WORKER_NEEDS),
    Case("variant-lease-lock", lock="lease",
         needs=frozenset(f"{v} leases.coordination.k8s.io" for v in
                         ("get", "update", "watch", "create")) | WORKER_NEEDS | TOKEN_NEEDS),
]


@dataclass
class Outcome:
    logs: str = ""
    denied: set[str] = field(default_factory=set)
    requests: set[str] = field(default_factory=set)
    matched: set[str] = field(default_factory=set)
    led: bool = False
    events: int = 0
    checks: int = 0
    token: str | None = None
    problems: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _event(i: int) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"metadata": {"name": f"web-{i}.{i:016x}", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": f"web-{i}",
                               "uid": f"uid-web-{i}", "apiVersion": "v1"},
            "reason": "Started", "message": f"Started container web lp{i}",
            "source": {"component": "kubelet", "host": "node-1"}, "type": "Normal",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1}


class Run:
    """One case: kubesim + RBAC + intake + one agent replica, observed until clear."""

    def __init__(self, case: Case, workdir: Path, stack: ExitStack) -> None:
        self.case = case
        self.out = Outcome()
        self.sim = stack.enter_context(KubeSim(bookmark_interval=0.2))
        self._record_denials()
        files = BASE if case.lock == "endpoints" else (*BASE[:3], VARIANTS[case.lock])
        docs = load(files)
        if case.removed is not None:
            docs = without(docs, case.removed)
        for doc in docs:
            self.sim.create(doc["kind"], doc, doc["metadata"].get("namespace", ""))
        if case.seed_token:
            self.sim.create("configmaps", {"metadata": {"name": TOKEN_CONFIGMAP},
                                           "data": {TOKEN_KEY: "0"}}, "default")
        token = self.sim.issue_token(*SA)
        self.intake = stack.enter_context(LocalIntake())
        env = {"DD_KUBERNETES_KUBECONFIG_PATH": self.sim.kubeconfig_for(token),
               "DD_API_KEY": API_KEY, "DD_DD_URL": self.intake.url, "KUBERNETES": "true",
               "DD_COLLECT_KUBERNETES_EVENTS": "true", "DD_LEADER_ELECTION_RESOURCE": case.lock,
               "DD_TOKEN_CHECKPOINT_INTERVAL": "0.5", "DD_CONTROLPLANE_CHECK_INTERVAL": "1",
               "DD_EVENT_FLUSH_INTERVAL": "0.2", "DD_WORKER_HEARTBEAT_INTERVAL": "1",
               **case.env}
        self.fleet = stack.enter_context(Replicas(self.sim, workdir, env=env))
        self.replica: Replica = self.fleet.add()
        self.started = 0.0
        self.clear_at: float | None = None
        self.done = False
        self._events = 0

    def _record_denials(self) -> None:
        cluster = self.sim.cluster
        decide = cluster.authorize

        def authorize(user: Any, info: Any) -> tuple[bool, str]:
            allowed, reason = decide(user, info)
            if not allowed and user.name == SA_USER:
                self.out.denied.add(f"{info.verb} {resource_label(info)}")
            return allowed, reason

        cluster.authorize = authorize  # type: ignore[method-assign]

    def start(self) -> None:
        self.replica.start()
        self.started = time.monotonic()

    def observe(self) -> None:
        """One look at everything; stops the agent once the outcome is clear and settled."""
        case, out = self.case, self.out
        self.sim.create("events", _event(self._events), "default")
        self._events += 1
        out.logs = self.replica.logs()
        out.matched = {rx for rx in case.evidence if re.search(rx, out.logs)}
        out.led = "became leader of" in out.logs
        out.events = sum("lp" in str(e.get("msg_text", "")) for e in self.intake.events())
        out.checks = len(self.intake.service_checks())
        stored = self.sim.get("configmaps", TOKEN_CONFIGMAP, "default") or {}
        out.token = (stored.get("data") or {}).get(TOKEN_KEY)
        if case.unhealthy is not None:
            state = self.replica.state() or {}
            out.problems.update(state.get("problems") or {})
        now = time.monotonic()
        if self.clear_at is None and self._clear():
            self.clear_at = now
        if self.clear_at is not None and now - self.clear_at >= SETTLE_S:
            self.finish()

    def _clear(self) -> bool:
        case, out = self.case, self.out
        wanted = [out.matched == set(case.evidence), out.denied >= case.denied,
                  not case.leads or out.led, not case.events or out.events > 0,
                  not case.checks or out.checks > 0,
                  not case.checkpoint or out.token not in (None, "0"),
                  case.unhealthy is None or case.unhealthy[0] in out.problems,
                  case.needs <= self._requests()]
        return all(wanted)

    def _requests(self) -> set[str]:
        return {verb_resource for client in self.sim.counts()["clients"]
                if client["user"] == SA_USER for verb_resource in client["requests"]}

    def finish(self) -> None:
        if self.done:
            return
        self.out.requests = self._requests()
        if self.replica.alive():
            self.replica.kill()
        self.out.logs = self.replica.logs()
        self.out.seconds = time.monotonic() - self.started
        self.done = True


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    with ExitStack() as stack:
        runs = [Run(case, tmp_path_factory.mktemp(case.name), stack) for case in CASES]
        for run in runs:
            run.start()
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and not all(run.done for run in runs):
            for run in runs:
                if not run.done:
                    run.observe()
            time.sleep(TICK_S)
        for run in runs:
            run.finish()
        yield {run.case.name: run.out for run in runs}


# -- the proofs ---------------------------------------------------------------------------


def test_every_grant_of_the_manifests_has_its_case() -> None:
    assert sorted(c.removed for c in CASES if c.removed) == sorted(grants(load(BASE)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, outcomes: dict[str, Outcome]) -> None:
    out = outcomes[case.name]
    context = f"{case.name} after {out.seconds:.1f}s; log tail:\n{out.logs[-4000:]}"
    assert out.denied == set(case.denied), context
    assert out.matched == set(case.evidence), context
    if not case.denied:
        assert not FORBIDDEN.search(out.logs), context
    if case.leads is not None:
        assert out.led == case.leads, context
    if case.events is not None:
        assert (out.events > 0) == case.events, context
    if case.checks is not None:
        assert (out.checks > 0) == case.checks, context
    if case.checkpoint is not None:
        assert (out.token not in (None, "0")) == case.checkpoint, (out.token, context)
    if case.unhealthy is not None:
        component, problem = case.unhealthy
        assert re.search(problem, out.problems.get(component, "")), (out.problems, context)
    assert case.needs <= out.requests, (sorted(case.needs - out.requests), context)
