"""API-server load of the election: requests/min for the leader and each follower.

    python bench/bench_api_load.py [--quick] [--window-leases 4]

Groups of candidates campaign at once on kubesim, each group on its own lock, and kubesim
counts every request per client (user agent; each replica's identity is in it):

    real ...... ``python -m supervisor run`` processes (3 with the events worker and a trickle
                of 5 events/s so that the token checkpoint is written; 30 with every
                ``DD_COLLECT_*`` off, so no worker ever starts)
    light ..... threads in this process running the real election code
                (``supervisor.elector.Elector`` on ``supervisor.locks.make_lock``, each with
                its own ``workers.kubeapi.KubeApi``): 3, 30, 100 watching the lock, and the
                same counts polling it as client-go does (``Elector(watch=False)``)

Steady state: counters reset once every group has a leader and every follower watches (and
one more retry period), then read after ``--window-leases`` lease periods, for a 15 s lease
and the default 60 s. The windows are shorter than a lock watch lives (300-600 s), so the
model adds the watch re-opens (one per 450 s on average).
After the 15 s window: the cost of one hand-over (the leader of each light group of 100
releases) and of one crash (the leader stops renewing; followers wait for expiry).
A paper model for 5,000 candidates follows from the figures.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import orjson
from _agents import Agent, agent_env, wait_for
from _cluster import Intake, Sim, Writer
from loguru import logger

from supervisor.elector import ElectionTiming, Elector
from supervisor.locks import make_lock
from workers.kubeapi import KubeApi, load_configuration
from workers.settings import KubeSettings

LIGHT_UA = "bench-light"


@dataclass
class Light:
    """One lightweight candidate: the real elector in a thread of this process."""

    group: str
    elector: Elector
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @classmethod
    def make(cls, sim: Sim, group: str, i: int, lease: float, watch: bool) -> Light:
        identity = f"{group}-{i}-{secrets.token_hex(3)}"
        api = KubeApi(load_configuration(KubeSettings(kubeconfig_path=sim.kubeconfig)),
                      user_agent=f"{LIGHT_UA} ({group}; {identity})")
        lock = make_lock("endpoints", api, namespace="default", name=f"lock-{group}-{lease:g}",
                         identity=identity)
        elector = Elector(lock, ElectionTiming.from_lease(lease), watch=watch,
                          on_started_leading=lambda: None, on_stopped_leading=lambda: None)
        light = cls(group, elector)
        light.thread = threading.Thread(target=elector.run, args=(light.stop,), daemon=True)
        light.thread.start()
        return light

    def end(self, *, release: bool) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(15)
        if release:
            self.elector.release()


@dataclass
class Group:
    name: str
    kind: str  # real | light
    mode: str  # watch | poll
    n: int
    lease: float
    agents: list[Agent] = field(default_factory=list)
    lights: list[Light] = field(default_factory=list)

    @property
    def lock(self) -> str:
        return f"lock-{self.name}-{self.lease:g}"

    def holder(self, sim: Sim) -> tuple[str, int]:
        obj = sim.request("GET", f"/api/v1/namespaces/default/endpoints/{self.lock}",
                          expect=(200, 404))
        ann = ((obj or {}).get("metadata") or {}).get("annotations") or {}
        text = ann.get("control-plane.alpha.kubernetes.io/leader")
        if not text:
            return "", 0
        rec = orjson.loads(text)
        return rec.get("holderIdentity") or "", int(rec.get("leaderTransitions") or 0)

    def settled(self, sim: Sim) -> bool:
        holder, _ = self.holder(sim)
        if not holder:
            return False
        if self.kind == "light":
            return all(x.elector.status().holder == holder
                       and (self.mode == "poll" or x.elector.status().watching
                            or x.elector.identity == holder) for x in self.lights)
        states = [a.state() for a in self.agents]
        if not all(s and s.get("ready") and s.get("leader") == holder for s in states):
            return False
        if self.name != "real3":
            return True
        # The events group: steady once the leader's worker runs and has checkpointed.
        lead = next((s for s in states if s and s.get("identity") == holder), None)
        return lead is not None and bool(lead["checkpoint"]["writes"]) and any(
            w.get("state") == "running" for w in lead.get("workers", []))

    def identities(self) -> list[str]:
        if self.kind == "light":
            return [x.elector.identity for x in self.lights]
        return [(a.state() or {}).get("identity", a.name) for a in self.agents]

    def owns(self, user_agent: str) -> bool:
        if self.kind == "light":
            return user_agent.startswith(f"{LIGHT_UA} ({self.name};")
        if "(supervisor; " in user_agent:
            return user_agent.split("(supervisor; ", 1)[1].startswith(f"{self.name}-")
        # Worker requests carry no identity: only the events group runs workers.
        return self.name == "real3" and user_agent.startswith("kube-event-agent/")

    def stop(self) -> None:
        for a in self.agents:
            a.kill()
        for x in self.lights:
            x.stop.set()
        for x in self.lights:
            x.end(release=False)
            x.elector.lock.api.close()


def start_groups(sim: Sim, intake: Intake, work: Path, lease: float, quick: bool
                 ) -> list[Group]:
    groups: list[Group] = []
    real = [3] if quick else [3, 30]
    light = [3, 30] if quick else [3, 30, 100]
    for n in real:
        g = Group(f"real{n}", "real", "watch", n, lease)
        env = agent_env(sim, lease_s=lease, intake=intake if n == 3 else None, events=n == 3,
                        DD_LEADER_LEASE_NAME=g.lock, DD_LOG_LEVEL="warning")
        g.agents = [Agent(f"{g.name}-{i}", env, work).start() for i in range(n)]
        groups.append(g)
    for mode in ("watch", "poll"):
        for n in light:
            g = Group(f"{mode}{n}", "light", mode, n, lease)
            g.lights = [Light.make(sim, g.name, i, lease, mode == "watch") for i in range(n)]
            groups.append(g)
    return groups


def measure(sim: Sim, groups: list[Group], window: float) -> dict[str, Any]:
    wait_for(lambda: all(g.settled(sim) for g in groups), 180, "every group settled", 0.5)
    # A follower that polled once before its watch delivered anything is still waiting out
    # that retry period: let it end, or its last GET lands in the window.
    time.sleep(max(g.lease for g in groups) / 4 * 1.2)
    before = {g.name: g.holder(sim) for g in groups}
    identities = {g.name: g.identities() for g in groups}
    sim.reset_counts()
    t0 = time.time()
    time.sleep(window)
    snap = sim.counts()
    seconds = time.time() - t0
    out = {}
    for g in groups:
        holder, transitions = g.holder(sim)
        stable = (holder, transitions) == before[g.name]
        out[g.name] = rates(g, snap, holder, identities[g.name], seconds) | {
            "stable": stable, "kind": g.kind, "mode": g.mode, "n": g.n, "lease": g.lease}
    return out


def identity_of(user_agent: str) -> str:
    """The candidate identity in a user agent; "" for the leader's workers (none in it)."""
    if "; " not in user_agent:
        return ""
    return user_agent.rsplit("; ", 1)[1].rstrip(")")


def rates(g: Group, snap: dict[str, Any], holder: str, identities: list[str],
          seconds: float) -> dict[str, Any]:
    """Requests/min of the leader (supervisor + its workers) and of each follower."""
    per_min = 60.0 / seconds
    by_identity: dict[str, float] = defaultdict(float)
    leader: dict[str, float] = defaultdict(float)
    follower_kinds: dict[str, float] = defaultdict(float)
    for client in snap["clients"]:
        if not g.owns(client["userAgent"]):
            continue
        identity = identity_of(client["userAgent"])
        for key, n in client["requests"].items():
            if identity in ("", holder):
                leader[("worker " if not identity else "") + key] += n * per_min
            else:
                by_identity[identity] += n * per_min
                follower_kinds[key] += n * per_min
    followers = [by_identity.get(i, 0.0) for i in identities if i != holder]
    nf = max(1, len(followers))
    return {"seconds": seconds, "holder": holder,
            "leader_rpm": sum(leader.values()), "leader_by_request": dict(leader),
            "follower_rpm_mean": sum(followers) / nf,
            "follower_rpm_max": max(followers, default=0.0), "followers": len(followers),
            "follower_by_request_mean": {k: v / nf for k, v in follower_kinds.items()},
            "total_rpm": sum(leader.values()) + sum(followers)}


def change_cost(sim: Sim, groups: list[Group], *, crash: bool) -> dict[str, Any]:
    """Requests of a whole light group around one leader change (release, or crash)."""
    targets = [g for g in groups if g.kind == "light" and g.n == max(x.n for x in groups)]
    lease = targets[0].lease
    old = {g.name: g.holder(sim)[0] for g in targets}
    sim.reset_counts()
    t0 = time.time()
    for g in targets:
        leader = next(x for x in g.lights if x.elector.identity == old[g.name])
        g.lights.remove(leader)
        threading.Thread(target=leader.end, kwargs={"release": not crash}, daemon=True).start()
    wait_for(lambda: all(g.holder(sim)[0] not in ("", old[g.name]) for g in targets),
             lease * 2 + 30, "new leaders", 0.05)
    moved = time.time() - t0
    time.sleep(lease / 4 * 1.2 + 1)  # let every follower settle on the new leader
    snap = sim.counts()
    out = {}
    for g in targets:
        n = sum(cl["total"] for cl in snap["clients"] if g.owns(cl["userAgent"]))
        out[g.name] = {"requests": n, "per_candidate": n / g.n, "seconds": time.time() - t0,
                       "lock_moved_s": moved, "candidates": g.n}
    return out


def model(lease: float, n: int, *, ping_rpm: float, change_per_candidate: float
          ) -> dict[str, float]:
    """Requests/min for ``n`` candidates on paper, from the elector's timers and the
    measured per-candidate cost of a leader change.

    leader   = 60/(lease/4) renewals + 60/5 checkpoint writes (events flowing)
               + 60/300 events-worker watch re-opens
    follower = 60/450 lock-watch re-opens (timeoutSeconds uniform in 300..600 s)
               + the agent's API ping (``ping_rpm``, measured; 0 for the elector alone)
    polling  = 60/(lease/4) GETs per follower (client-go)
    """
    renew = 60 / (lease / 4)
    leader = renew + 60 / 5 + 60 / 300
    follower = 60 / 450 + ping_rpm
    return {"leader_rpm": leader, "follower_rpm": follower,
            "follower_rpm_elector_only": 60 / 450,
            "steady_total_rpm": leader + (n - 1) * follower,
            "steady_total_rpm_elector_only": leader + (n - 1) * 60 / 450,
            "polling_total_rpm": leader + (n - 1) * renew,
            "per_change_requests": change_per_candidate * n,
            "watch_events_per_s": (n - 1) * renew / 60}


def run(args: Any) -> dict[str, Any]:
    logger.remove()
    logger.add(lambda m: print(m, end=""), level="ERROR")
    work = c.new_log_dir("api-load")
    leases = [3.0] if args.quick else [15.0, 60.0]
    results: dict[str, Any] = {"machine": c.machine(), "runs": {}}
    with Sim(work) as sim:
        intake, writer = Intake(), Writer(sim)
        writer.start(start_id=0, rate=5, threads=1)
        try:
            for n, lease in enumerate(leases):
                window = lease * (args.window_leases if n == 0 else max(2, args.window_leases - 1))
                print(f"lease {lease:g} s: starting the groups, then a {window:g} s window",
                      flush=True)
                groups = start_groups(sim, intake, work, lease, args.quick)
                try:
                    run_ = {"window_s": window, "groups": measure(sim, groups, window)}
                    if n == 0:
                        run_["handover"] = change_cost(sim, groups, crash=False)
                        wait_for(lambda gs=groups: all(g.settled(sim) for g in gs), 120,
                                 "settled again", 0.5)
                        run_["crash"] = change_cost(sim, groups, crash=True)
                finally:
                    for g in groups:
                        g.stop()
                results["runs"][f"{lease:g}"] = run_
        finally:
            writer.close()
            intake.close()
    # A leader change costs the same requests whatever the lease: measured with the first.
    first = next(iter(results["runs"].values()))
    watchers = [k for k in first.get("handover", {}) if k.startswith("watch")]
    change = first["handover"][watchers[0]]["per_candidate"] if watchers else float("nan")
    results["model_5000"] = {}
    for lease, run_ in results["runs"].items():
        ping = c.median(g["follower_by_request_mean"].get("get /version", 0.0)
                        for g in run_["groups"].values() if g["kind"] == "real")
        results["model_5000"][lease] = model(float(lease), 5000, ping_rpm=ping,
                                             change_per_candidate=change)
    c.drop_log_dir(work, args.keep_logs)
    return results


def table_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for lease, run_ in results["runs"].items():
        for g in run_["groups"].values():
            rows.append([f"{g['n']} {g['kind']}", g["mode"], float(lease),
                         g["leader_rpm"], g["follower_rpm_mean"], g["follower_rpm_max"],
                         g["total_rpm"], "yes" if g["stable"] else "NO"])
    return rows


def plot(plt: Any, results: dict[str, Any]) -> Any:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"15": "-", "60": "--", "3": "-"}
    for lease, run_ in results["runs"].items():
        series: dict[tuple[str, str], list[tuple[int, float, float]]] = defaultdict(list)
        for g in run_["groups"].values():
            series[(g["kind"], g["mode"])].append((g["n"], g["total_rpm"],
                                                   g["follower_rpm_mean"]))
        for (kind, mode), points in sorted(series.items()):
            points.sort()
            xs = [p[0] for p in points]
            label = f"{kind}, {mode}, lease {lease} s"
            color = {"light/poll": "C3", "light/watch": "C0", "real/watch": "C2"}[f"{kind}/{mode}"]
            left.plot(xs, [p[1] for p in points], styles.get(lease, ":"), marker="o",
                      color=color, label=label)
            right.plot(xs, [p[2] for p in points], styles.get(lease, ":"), marker="o",
                       color=color, label=label)
    for lease, m in results.get("model_5000", {}).items():
        for key, color in (("steady_total_rpm", "C2"), ("steady_total_rpm_elector_only", "C0"),
                           ("polling_total_rpm", "C3")):
            marker = "x" if lease == "15" else "+"
            left.plot([5000], [m[key]], marker, color=color, markersize=9)
    if results.get("model_5000"):
        left.text(5000, 1.5, "5,000 on paper:\nx lease 15 s\n+ lease 60 s", ha="right",
                  fontsize=7)
    for ax, what in ((left, "all candidates together"), (right, "per follower (mean)")):
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(0, ax.get_ylim()[1] * 3)
        ax.set_xlabel("replicas (candidates)")
        ax.set_ylabel("API requests / min")
        ax.set_title(what)
        ax.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7)
    fig.suptitle("leader election load on the API server (kubesim counters)")
    return fig


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--window-leases", type=int, default=4,
                   help="lease periods per steady-state window (one less for the 60 s lease)")
    args = p.parse_args()
    results = run(args)
    json_path, png_path = c.result_paths(args.out, "bench_api_load", args.quick)
    c.write_json(json_path, results)
    c.save_plot(plot, results, png_path)
    print()
    headers = ["candidates", "lock", "lease s", "leader/min", "follower/min", "follower max",
               "all/min", "stable"]
    print(c.table(headers, table_rows(results),
                  title=f"Requests/min at steady state (kubesim counters). {c.machine_line()}"))
    for lease, run_ in results["runs"].items():
        for what in ("handover", "crash"):
            for name, cost in run_.get(what, {}).items():
                print(f"lease {lease} s, one {'release' if what == 'handover' else 'crash'} "
                      f"among {cost['candidates']} {name[:-len(str(cost['candidates']))]}ing: "
                      f"{cost['requests']} requests ({cost['per_candidate']:.1f} per candidate)"
                      f" in {cost['seconds']:.1f} s; lock moved after {cost['lock_moved_s']:.2f} s")
    for lease, m in results.get("model_5000", {}).items():
        print(f"model, 5,000 candidates, lease {lease} s: leader {m['leader_rpm']:.1f}/min, "
              f"follower {m['follower_rpm']:.2f}/min ({m['follower_rpm_elector_only']:.2f} "
              f"without the agent's API ping); all {m['steady_total_rpm']:,.0f}/min "
              f"({m['steady_total_rpm_elector_only']:,.0f} without the ping); polling "
              f"{m['polling_total_rpm']:,.0f}/min; one leader change "
              f"~{m['per_change_requests']:,.0f} requests; {m['watch_events_per_s']:,.0f} "
              "watch events/s pushed to followers")
    print(f"results: {json_path}, {png_path}")


if __name__ == "__main__":
    main()
