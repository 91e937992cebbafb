"""Hand-over (SIGTERM the leader), crash take-over (SIGKILL it) and worker restart, timed.

    python bench/bench_handover.py [--quick] [--leases 3,15,30,60] [--graceful 3]

Three real replicas (``python -m supervisor run``, events worker on) against kubesim, a
local intake and a writer creating 20 events/s throughout. For every lease: SIGTERM the
leader (``--graceful`` times), then SIGKILL it once; the replica is restarted each time so
three are always campaigning. With the 15 s lease also: SIGKILL the events worker
(``--restarts`` times; ``worker_stable_after`` 2 s so each is a first crash, 0.5 s backoff).

Every column is seconds after the signal (median of the runs), read from outside or from
the new leader's own log stamps:

    released ..... the lock shows an empty holder (the old leader's release), lock watch
    lock moved ... the lock names the new holder, lock watch
    token ........ the new leader read ConfigMap datadogtoken ("resuming from token")
    worker up .... its fork server started (preloading), the worker forked and got Start
    collecting ... the worker imported its job and built its clients ("collecting events")
    heartbeat .... /health shows the new worker "running" (its first heartbeat arrived)
    1st watch .... kubesim counted the worker's first list/watch of events (25 ms polls)
    1st event .... the intake received the new leader's first event

Then ``preload``: the fork server's first start, in a fresh interpreter, with the events
worker's preload list as registered, without ``kubernetes.client.api.core_v1_api``, and
with the base modules only: the biggest part of "worker up".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
from _agents import Agent, CountsPoller, LockWatch, agent_env, log_times, replica_of, wait_for
from _cluster import Intake, Sim, Writer

RATE = 20.0
REPLICAS = 3
LOG_MARKS = {"token": "resuming from token", "worker up": "worker events started",
             "collecting": "collecting events from"}
OLD_MARKS = {"workers stopped": "worker events stopped", "released": "released endpoints",
             "exited": "stopped in "}
PHASES = ("released", "lock moved", "token", "worker up", "collecting", "heartbeat",
          "1st watch", "1st event")


def events_watch(agent_ua: str, key: str) -> bool:
    return agent_ua.endswith(" events") and key in ("watch events", "list events")


class Bench:
    def __init__(self, sim: Sim, intake: Intake, writer: Writer, work: Path) -> None:
        self.sim, self.intake, self.writer, self.work = sim, intake, writer, work
        self.fleet: list[Agent] = []
        self.lock = LockWatch(sim)
        self.poller = CountsPoller(sim)

    # -- fleet -------------------------------------------------------------------------
    def start_fleet(self, lease: float) -> Agent:
        # A lock per lease: a fresh fleet on the previous fleet's released lock can race its
        # lock watch and lead without workers (an elector race, reported).
        lock = f"lock-lease-{lease:g}"
        self.lock.close()
        self.lock = LockWatch(self.sim, lock)
        env = agent_env(self.sim, lease_s=lease, intake=self.intake, DD_LEADER_LEASE_NAME=lock,
                        DD_WORKER_STABLE_AFTER="2", DD_WORKER_HEARTBEAT_INTERVAL="1")
        self.fleet = [Agent(f"l{lease:g}-r{i}", env, self.work).start()
                      for i in range(REPLICAS)]
        return self.settled(90)

    def leader(self) -> Agent | None:
        holder = replica_of(self.lock.holder())
        return next((a for a in self.fleet if a.name == holder and a.alive()), None)

    def settled(self, timeout: float) -> Agent:
        """Every replica up and following the same live leader, which delivers events."""
        since = time.time()
        leader: Agent = wait_for(self.leader, timeout, "a leader")
        for agent in self.fleet:
            wait_for(lambda a=agent: (s := a.state()) and s.get("ready")
                     and s.get("leader") == self.lock.holder(), timeout, f"{agent.name} ready")
        wait_for(lambda: any(s == leader.name and n for _, s, n in self.intake.arrivals(since)),
                 timeout, "events from the leader")
        return leader

    def stop_fleet(self) -> None:
        for agent in sorted(self.fleet, key=lambda a: a is self.leader()):
            agent.stop()

    # -- one leader change ----------------------------------------------------------------
    def leader_change(self, lease: float, signum: int) -> dict[str, Any]:
        old = self.settled(lease * 2 + 60)
        old_identity = self.lock.holder()
        self.poller.start()
        time.sleep(0.1)
        dups = self.intake.stats()["dups"]
        t0 = time.time()
        old.signal(signum)
        timeout = lease * 1.6 + 30

        def new_holder() -> tuple[float, str] | None:
            return next(((at, h) for at, h, _ in self.lock.after(t0)
                         if h and h != old_identity), None)

        moved_at, holder = wait_for(new_holder, timeout, "the lock to move")
        new = next(a for a in self.fleet if a.name == replica_of(holder))
        heartbeat = self._heartbeat(new, t0, timeout)
        first = wait_for(lambda: next((at for at, s, n in self.intake.arrivals(t0)
                                       if s == new.name and n), None), timeout, "1st event")
        old.proc.wait(30)  # type: ignore[union-attr]
        self.poller.stop()
        released = next((at for at, h, _ in self.lock.after(t0) if not h), None)
        marks = log_times(new.log(), LOG_MARKS, t0)
        row = {"released": released, "lock moved": moved_at, **marks,
               "heartbeat": heartbeat, "1st watch": self.poller.first(events_watch),
               "1st event": first}
        if signum == signal.SIGTERM:  # the old leader's side, from its own log
            row |= {f"old {k}": v for k, v in log_times(old.log(), OLD_MARKS, t0).items()}
        row = {k: (v - t0 if v is not None else None) for k, v in row.items()}
        row["old exit code"] = old.proc.returncode  # type: ignore[union-attr]
        row["from"], row["to"] = old.name, new.name
        row["dup"] = self._dups_since(dups)
        old.start()  # back as a follower: three replicas campaign again
        return row

    def _heartbeat(self, agent: Agent, t0: float, timeout: float) -> float:
        def running() -> float | None:
            w = agent.worker()
            return time.time() if w.get("state") == "running" and w.get("pid") else None
        return wait_for(running, timeout, "the new worker's heartbeat", interval=0.02)

    # -- worker restart ---------------------------------------------------------------------
    def worker_restart(self) -> dict[str, Any]:
        leader = self.settled(60)
        time.sleep(2.5)  # worker_stable_after (2 s): this crash is a first one (0.5 s)
        old_pid = wait_for(lambda: leader.worker_pids().get("events"), 30, "events worker")
        self.poller.start()
        time.sleep(0.1)
        dups = self.intake.stats()["dups"]
        t0 = time.time()
        os.kill(old_pid, signal.SIGKILL)
        new_pid_at = wait_for(lambda: (p := leader.worker_pids().get("events")) not in
                              (None, old_pid) and time.time(), 30, "a new worker", 0.005)

        def running() -> float | None:
            w = leader.worker()
            ok = w.get("state") == "running" and w.get("pid") not in (None, old_pid)
            return time.time() if ok else None

        heartbeat = wait_for(running, 30, "the new worker's heartbeat", interval=0.01)
        first = wait_for(lambda: next((at for at, s, n in self.intake.arrivals(heartbeat)
                                       if s == leader.name and n), None), 30, "1st event")
        self.poller.stop()
        text = leader.log()
        marks = log_times(text, {"crash seen": f"(pid {old_pid}) crashed",
                                 "worker up": "worker events started",
                                 "collecting": "collecting events from"}, t0)
        backoff = None
        for line in text.splitlines():
            if f"(pid {old_pid}) crashed" in line and "restart in " in line:
                backoff = float(line.rsplit("restart in ", 1)[1].split()[0])
        row = {**marks, "new pid": new_pid_at, "heartbeat": heartbeat,
               "1st watch": self.poller.first(events_watch), "1st event": first}
        row = {k: (v - t0 if v is not None else None) for k, v in row.items()}
        row["backoff"] = backoff
        row["dup"] = self._dups_since(dups)
        return row

    def _dups_since(self, before: int) -> int:
        """Duplicates the change caused: the replay since the last checkpoint comes in the
        new worker's first batches, so 2 flush intervals after its first event suffice."""
        time.sleep(2.0)
        return self.intake.stats()["dups"] - before


def preload_probe(repeat: int) -> dict[str, float]:
    """The fork server's first start (interpreter + preload imports), fresh each time."""
    from supervisor.lifecycle import BASE_PRELOAD
    from workers.registry import KINDS

    full = list(dict.fromkeys([*BASE_PRELOAD, *KINDS["events"].preload]))
    variants = {"as registered": full,
                "without core_v1_api": [m for m in full if not m.endswith("core_v1_api")],
                "base only": list(BASE_PRELOAD)}
    code = ("import sys,time\nfrom multiprocessing import get_context\n"
            "ctx=get_context('forkserver'); ctx.set_forkserver_preload(sys.argv[1:])\n"
            "t=time.perf_counter(); p=ctx.Process(target=int); p.start()\n"
            "print(time.perf_counter()-t); p.join()\n")
    out = {}
    for name, modules in variants.items():
        runs = []
        for _ in range(repeat):
            res = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True,
                                 text=True, check=True, cwd=c.ROOT)
            runs.append(float(res.stdout.split()[-1]))
        out[name] = c.median(runs)
    return out


def run(args: Any) -> dict[str, Any]:
    work = c.new_log_dir("handover")
    results: dict[str, Any] = {"machine": c.machine(), "rate_events_s": RATE, "leases": {}}
    results["preload"] = preload_probe(1 if args.quick else 3)
    with Sim(work) as sim:
        intake, writer = Intake(), Writer(sim)
        bench = Bench(sim, intake, writer, work)
        restart_lease = 15.0 if 15.0 in args.leases else args.leases[0]
        try:
            for n, lease in enumerate(args.leases):
                print(f"lease {lease:g} s ...", flush=True)
                writer.start(start_id=n * 1_000_000, rate=RATE, threads=2)
                bench.start_fleet(lease)
                written_from = time.time()  # the leader delivers: nothing after is skipped
                runs: dict[str, Any] = {"graceful": [], "crash": [], "worker": []}
                if lease == restart_lease:
                    runs["worker"] = [bench.worker_restart() for _ in range(args.restarts)]
                for _ in range(args.graceful):
                    runs["graceful"].append(bench.leader_change(lease, signal.SIGTERM))
                runs["crash"].append(bench.leader_change(lease, signal.SIGKILL))
                bench.settled(lease * 2 + 60)
                written = writer.stop()["records"]
                ids = [i for i, sent, _ in written if sent > written_from]
                got = intake.wait_markers(range(ids[0], ids[-1] + 1), 30) if ids else {}
                runs["integrity"] = {"written": len(ids), "lost": len(set(ids) - set(got))}
                results["leases"][f"{lease:g}"] = runs
                bench.stop_fleet()
        finally:
            for agent in bench.fleet:
                agent.kill()
            bench.lock.close()
            writer.close()
            intake.close()
    c.drop_log_dir(work, args.keep_logs)
    return results


def rows(results: dict[str, Any]) -> list[list[Any]]:
    out = []
    for lease, runs in results["leases"].items():
        lost = runs["integrity"]["lost"]
        for kind in ("graceful", "crash", "worker"):
            if not runs[kind]:
                continue
            label = {"graceful": "SIGTERM leader", "crash": "SIGKILL leader",
                     "worker": "SIGKILL worker"}[kind]
            med = {p: c.median(r.get(p) for r in runs[kind]) for p in PHASES}
            dup = c.median(r["dup"] for r in runs[kind])
            out.append([label, float(lease), len(runs[kind]), *[med[p] for p in PHASES],
                        int(dup), lost])
    return out


def plot(plt: Any, results: dict[str, Any]) -> Any:
    labels, stacks = [], []
    steps = ("lock moved", "token", "worker up", "collecting", "1st watch", "1st event")
    names = {"graceful": "SIGTERM leader", "crash": "SIGKILL leader", "worker": "SIGKILL worker"}
    for lease, runs in results["leases"].items():
        for kind in ("graceful", "crash", "worker"):
            if runs[kind]:
                labels.append(f"{names[kind]}, lease {lease} s")
                stacks.append([c.median(r.get(p) for r in runs[kind]) for p in steps])
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.6))
    longest = 0.0
    for y, med in enumerate(stacks):
        prev = 0.0
        for n, value in enumerate(med):
            if value is None or value != value:
                continue
            ax.barh(y, value - prev, left=prev, color=f"C{n}",
                    label=f"until {steps[n]}" if y == 0 else None)
            prev = longest_ = value
            longest = max(longest, longest_)
    ax.set_yticks(range(len(labels)), labels)
    if longest > 15:
        ax.set_xscale("symlog", linthresh=4, linscale=2)
        ticks = [t for t in (0, 1, 2, 3, 4, 10, 20, 40, 60, 80) if t <= longest * 1.05]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlim(0, longest * 1.05)
    ax.set_xlabel("seconds after the signal (median of the runs)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("leader and worker changes: where the time goes")
    return fig


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--leases", default="3,15,30,60", help="lease durations, seconds")
    p.add_argument("--graceful", type=int, default=3, help="SIGTERM hand-overs per lease")
    p.add_argument("--restarts", type=int, default=3, help="worker SIGKILLs")
    args = p.parse_args()
    args.leases = [float(x) for x in args.leases.split(",")]
    if args.quick:
        args.leases, args.graceful, args.restarts = [3.0], 1, 1
    results = run(args)
    json_path, png_path = c.result_paths(args.out, "bench_handover", args.quick)
    c.write_json(json_path, results)
    c.save_plot(plot, results, png_path)
    headers = ["scenario", "lease s", "runs", *PHASES, "dup", "lost"]
    print()
    print(c.table(headers, rows(results), title=f"Seconds after the signal, median; "
                  f"{REPLICAS} replicas, {RATE:g} events/s. {c.machine_line()}"))
    spans = [r["worker up"] - r["token"] for runs in results["leases"].values()
             for kind in ("graceful", "crash") for r in runs[kind]
             if r.get("worker up") is not None and r.get("token") is not None]
    flush = [r["1st event"] - r["1st watch"] for runs in results["leases"].values()
             for kind in ("graceful", "crash", "worker") for r in runs[kind]
             if r.get("1st event") is not None and r.get("1st watch") is not None]
    exits = [r["old exited"] for runs in results["leases"].values()
             for r in runs["graceful"] if r.get("old exited") is not None]
    results["summary"] = {"token_to_worker_up_s": c.summary(spans),
                          "first_watch_to_first_event_s": c.summary(flush),
                          "old_leader_exit_s": c.summary(exits)}
    c.write_json(json_path, results)
    print(f"\ntoken read -> worker up (fork server start + preload + fork), {len(spans)} leader "
          f"changes: median {c.median(spans):.2f} s, min {min(spans, default=0):.2f}, "
          f"max {max(spans, default=0):.2f};"
          f" 1st watch -> 1st event: median {c.median(flush):.2f} s (the flush interval); old "
          f"leader exited after SIGTERM: median {c.median(exits):.2f} s")
    pre = results["preload"]
    print(f"fork server first start (interpreter + preload), fresh: as registered "
          f"{pre['as registered']:.2f} s, without core_v1_api {pre['without core_v1_api']:.2f}"
          f" s, base modules only {pre['base only']:.2f} s")
    print(f"results: {json_path}, {png_path}")


if __name__ == "__main__":
    main()
