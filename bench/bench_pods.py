"""Memory of a leader pod and a follower pod, idle and under load; start-up times.

    python bench/bench_pods.py [--quick] [--load-seconds 20] [--starts 3]

Real ``python -m supervisor run`` processes against kubesim and a local intake (each in
its own process). Memory: two replicas with both workers enabled (events, control plane);
USS, PSS and RSS of every process of each pod (psutil), idle and while a writer creates
500 events/s (the maximum over samples every 2 s). USS is what the process alone holds; the
fork server's pages that workers still share count in nobody's USS, PSS splits shared pages
among their users (including other processes on this machine that map the same files).
Targets (issue 4): leader pod <= 100 MB USS, follower pod <= 60 MB.

Start-up, ``--starts`` times: one fresh replica (no lock, no token), leader election on,
while 20 events/s are being written: process start -> /ready, -> leader, -> worker up,
-> first event delivered at the intake.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import _common as c
from _agents import Agent, agent_env, log_times, pod_memory, wait_for
from _cluster import Intake, Sim, Writer

MB = 2**20
PROCESSES = ("supervisor", "forkserver", "events", "controlplane", "resource_tracker")
TARGET_MB = {"leader": 100, "follower": 60}


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["process"]: r for r in rows}
    return {"by_process": {p: {k: by[p][k] for k in ("uss", "pss", "rss")} for p in by},
            "uss": sum(r["uss"] for r in rows), "pss": sum(r["pss"] for r in rows),
            "processes": len(rows)}


def peak(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-process maxima and the largest total over the samples."""
    out: dict[str, Any] = {"by_process": {}, "uss": 0, "pss": 0, "samples": len(samples)}
    for s in samples:
        out["uss"] = max(out["uss"], s["uss"])
        out["pss"] = max(out["pss"], s["pss"])
        for p, m in s["by_process"].items():
            cur = out["by_process"].setdefault(p, {"uss": 0, "pss": 0, "rss": 0})
            for k in ("uss", "pss", "rss"):
                cur[k] = max(cur[k], m[k])
    return out


def memory(sim: Sim, intake: Intake, writer: Writer, work: Path, load_s: float
           ) -> dict[str, Any]:
    env = agent_env(sim, lease_s=60, intake=intake, DD_COLLECT_CONTROLPLANE_CHECKS="true")
    lead = Agent("pod-a", env, work).start()
    wait_for(lead.is_leader, 60, "the first pod to lead", alive=[lead])
    follow = Agent("pod-b", env, work).start()
    pods = [lead, follow]
    try:
        wait_for(lambda: (s := follow.state()) and s.get("ready") and s.get("leader"), 60,
                 "the follower", alive=pods)
        wait_for(lambda: sorted(lead.worker_pids()) == ["controlplane", "events"], 60,
                 "both workers", alive=pods)
        writer.start(start_id=0, rate=10, threads=1)
        wait_for(lambda: intake.arrivals(lead.started_at), 60, "events delivered", alive=pods)
        writer.stop()
        time.sleep(5)  # idle: nothing written, both pods settled
        out: dict[str, Any] = {"idle": {"leader": totals(pod_memory(lead.pid)),
                                        "follower": totals(pod_memory(follow.pid))}}
        writer.start(start_id=100_000, rate=500, threads=8, duration=load_s)
        samples: dict[str, list[dict[str, Any]]] = {"leader": [], "follower": []}
        end = time.time() + load_s
        while time.time() < end:
            time.sleep(min(2.0, max(0.0, end - time.time())))
            samples["leader"].append(totals(pod_memory(lead.pid)))
            samples["follower"].append(totals(pod_memory(follow.pid)))
        written = writer.wait(60)["records"]
        got = intake.wait_markers(range(written[0][0], written[-1][0] + 1), 30)
        out["load"] = {role: peak(s) for role, s in samples.items()}
        out["load"]["written"], out["load"]["delivered"] = len(written), len(got)
        out["after"] = {"leader": totals(pod_memory(lead.pid)),
                        "follower": totals(pod_memory(follow.pid))}
        return out
    finally:
        follow.stop()
        lead.stop()


def startup(sim: Sim, intake: Intake, writer: Writer, work: Path, n: int) -> dict[str, Any]:
    writer.start(start_id=1_000_000 * (n + 1), rate=20, threads=1)
    try:
        with contextlib.suppress(RuntimeError):
            sim.request("DELETE", "/api/v1/namespaces/default/configmaps/datadogtoken",
                        expect=(200, 404))
            sim.request("DELETE", "/api/v1/namespaces/default/endpoints/"
                        "datadog-leader-election", expect=(200, 404))
        agent = Agent(f"start-{n}", agent_env(sim, lease_s=60, intake=intake), work).start()
        t0 = agent.started_at
        try:
            ready = wait_for(lambda: agent.ready() and time.time(), 60, "/ready", 0.01,
                             alive=[agent])
            first = wait_for(lambda: next((at for at, s, k in intake.arrivals(t0)
                                           if s == agent.name and k), None), 60,
                             "the first event", alive=[agent])
            marks = log_times(agent.log(), {"leader": "became leader",
                                            "worker up": "worker events started",
                                            "collecting": "collecting events from"}, t0)
        finally:
            agent.stop()
    finally:
        writer.stop()
    row = {"ready": ready, **marks, "1st event": first}
    return {k: v - t0 for k, v in row.items()}


def run(args: Any) -> dict[str, Any]:
    work = c.new_log_dir("pods")
    results: dict[str, Any] = {"machine": c.machine()}
    with Sim(work) as sim:
        intake, writer = Intake(), Writer(sim)
        try:
            print("memory ...", flush=True)
            results["memory"] = memory(sim, intake, writer, work, args.load_seconds)
            print("start-up ...", flush=True)
            results["startup"] = [startup(sim, intake, writer, work, n)
                                  for n in range(args.starts)]
        finally:
            writer.close()
            intake.close()
    c.drop_log_dir(work, args.keep_logs)
    return results


def table_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    mem = results["memory"]
    for state in ("idle", "load"):
        for role in ("leader", "follower"):
            t = mem[state][role]
            cells = []
            for p in PROCESSES:
                m = t["by_process"].get(p)
                cells.append(m["uss"] / MB if m else None)
            ok = t["uss"] / MB <= TARGET_MB[role]
            label = f"{role}, {'idle' if state == 'idle' else '500 ev/s (max)'}"
            rows.append([label, *cells, t["uss"] / MB, t["pss"] / MB,
                         f"<= {TARGET_MB[role]} {'ok' if ok else 'MISSED'}"])
    return rows


def plot(plt: Any, results: dict[str, Any]) -> Any:
    mem = results["memory"]
    labels, bars = [], []
    for state in ("idle", "load"):
        for role in ("leader", "follower"):
            labels.append(f"{role}\n{'idle' if state == 'idle' else 'under load'}")
            bars.append(mem[state][role]["by_process"])
    fig, ax = plt.subplots(figsize=(7, 4))
    bottoms = [0.0] * len(bars)
    for n, proc in enumerate(PROCESSES):
        heights = [(b.get(proc) or {}).get("uss", 0) / MB for b in bars]
        ax.bar(labels, heights, bottom=bottoms, color=f"C{n}", label=proc)
        bottoms = [x + h for x, h in zip(bottoms, heights, strict=True)]
    for role, target in TARGET_MB.items():
        ax.axhline(target, ls="--", lw=1, color="grey")
        ax.text(-0.45, target + 1, f"{role} target {target} MB", fontsize=7)
    ax.set_ylabel("USS, MB")
    ax.set_title("agent pod memory by process (USS)")
    ax.legend(fontsize=7)
    return fig


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--load-seconds", type=float, default=20.0)
    p.add_argument("--starts", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.load_seconds, args.starts = 6.0, 1
    results = run(args)
    json_path, png_path = c.result_paths(args.out, "bench_pods", args.quick)
    c.write_json(json_path, results)
    c.save_plot(plot, results, png_path)
    print()
    print(c.table(["pod", *PROCESSES, "USS total", "PSS total", "target MB"],
                  table_rows(results),
                  title=f"USS per process, MB (PSS total too). {c.machine_line()}"))
    s = results["startup"]
    med = {k: c.median(r.get(k) for r in s) for k in ("ready", "leader", "worker up",
                                                       "collecting", "1st event")}
    print(f"start-up, median of {len(s)} fresh single-replica starts: /ready "
          f"{med['ready']:.2f} s, leader {med['leader']:.2f} s, worker up "
          f"{med['worker up']:.2f} s, collecting {med['collecting']:.2f} s, first event "
          f"delivered {med['1st event']:.2f} s")
    print(f"results: {json_path}, {png_path}")


if __name__ == "__main__":
    main()
