"""Events/s watch -> intake ack for the real agent, with 1, 10 and 100 concurrent writers.

    python bench/bench_throughput_writers.py [--quick] [-n 20000]

One real agent (``python -m supervisor run``: supervisor + events worker process, default
batching) against kubesim and a local intake, each in its own process. For 1, 10 and 100
writer threads (one writer process, raw HTTP, as fast as they can) creating ``-n`` events
each time: the write rate kubesim sustained, the agent's delivery rate over the same span
(first write -> last event acknowledged by the intake), the lag behind the last write and
the per-event latency. Side by side, in the same run:

    backlog ... the same agent catching up on ``-n`` events written while it was stopped
                (token set before them): its own ceiling, unpaced by writers
    ceiling ... ``bench_events.run_ceiling``: one process reading the same events as a
                watch replay and decoding them (orjson), nothing else
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import _common as c
from _agents import Agent, agent_env, log_times, pod_cpu_s, wait_for
from _cluster import Intake, Sim, Writer
from bench_events import run_ceiling

WRITERS = (1, 10, 100)


def live(sim: Sim, intake: Intake, writer: Writer, agent: Agent, *, writers: int, n: int,
         base: int) -> dict[str, Any]:
    rv0 = sim.resource_version()
    cpu0 = pod_cpu_s(agent.pid)
    writer.start(start_id=base, count=n, threads=writers)
    written = writer.wait(600)
    records = written["records"]
    got = intake.wait_markers(range(base, base + n), 60)
    cpu = pod_cpu_s(agent.pid) - cpu0
    first_sent, last_answer = records[0][1], max(r[2] for r in records)
    last_arrival = max(got.values()) if got else float("nan")
    latency = [got[i] - sent for i, sent, _ in records if i in got]
    span = last_arrival - first_sent
    return {"writers": writers, "events": len(records), "write_errors": written["errors"],
            "write_rate": len(records) / (last_answer - first_sent),
            "delivered": len(got), "lost": sum(1 for i, _, _ in records if i not in got),
            "delivery_rate": len(got) / span, "lag_after_last_write_s": last_arrival
            - last_answer, "latency_s": c.summary(latency),
            "pod_cpu_percent": 100 * cpu / span, "rv0": rv0}


def backlog(sim: Sim, intake: Intake, writer: Writer, work: Path, *, n: int, base: int
            ) -> dict[str, Any]:
    rv0 = sim.resource_version()
    writer.start(start_id=base, count=n, threads=10)
    records = writer.wait(600)["records"]
    sim.set_token(rv0)
    # Its own lock: see bench_latency (a fresh agent racing a released lock record).
    env = agent_env(sim, lease_s=15, intake=intake, DD_LEADER_LEASE_NAME="lock-backlog")
    agent = Agent("backlog", env, work).start()
    try:
        got = intake.wait_markers(range(base, base + n), 300)
        done = max(got.values())
        marks = log_times(agent.log(), {"collecting": "collecting events from"},
                          agent.started_at)
    finally:
        agent.stop()
    start = marks["collecting"]
    return {"events": len(records), "delivered": len(got),
            "lost": sum(1 for i, _, _ in records if i not in got),
            "seconds": done - start, "delivery_rate": len(got) / (done - start)}


def run(args: Any) -> dict[str, Any]:
    work = c.new_log_dir("writers")
    n = args.n
    results: dict[str, Any] = {"machine": c.machine(), "events_per_run": n, "live": []}
    with Sim(work, history=n * (len(WRITERS) + 2) + 10_000) as sim:
        intake, writer = Intake(), Writer(sim)
        try:
            agent = Agent("agent", agent_env(sim, lease_s=15, intake=intake), work).start()
            try:
                writer.start(start_id=9_000_000, rate=10, threads=1)
                wait_for(lambda: intake.arrivals(agent.started_at), 60, "the first event",
                         alive=[agent])
                writer.stop()
                for k, writers in enumerate(WRITERS):
                    print(f"{writers} writer(s), {n} events ...", flush=True)
                    time.sleep(1.5)
                    results["live"].append(live(sim, intake, writer, agent, writers=writers,
                                                n=n, base=k * 1_000_000))
            finally:
                agent.stop()
            print("backlog ...", flush=True)
            results["backlog"] = backlog(sim, intake, writer, work, n=n, base=5_000_000)
            print("ceiling ...", flush=True)
            results["ceiling"] = run_ceiling(sim.kubeconfig, results["live"][-1]["rv0"], n)
            results["duplicates"] = intake.stats()["dups"]
        finally:
            writer.close()
            intake.close()
    c.drop_log_dir(work, args.keep_logs)
    return results


def plot(plt: Any, results: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['writers']} writer{'s' if r['writers'] > 1 else ''}" for r in results["live"]]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [r["write_rate"] for r in results["live"]], 0.4,
           label="written (kubesim)")
    ax.bar([x + 0.2 for x in xs], [r["delivery_rate"] for r in results["live"]], 0.4,
           label="delivered (agent)")
    ax.axhline(results["backlog"]["delivery_rate"], color="C2", ls="--",
               label="agent on a backlog")
    ax.axhline(results["ceiling"]["rate"], color="C3", ls=":", label="read + decode ceiling")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("events / s")
    ax.set_yscale("log")
    ax.set_title("events/s, watch -> intake ack")
    ax.legend(fontsize=8)
    return fig


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("-n", type=int, default=20_000, help="events per run")
    args = p.parse_args()
    if args.quick:
        args.n = min(args.n, 2_000)
    results = run(args)
    json_path, png_path = c.result_paths(args.out, "bench_throughput_writers", args.quick)
    c.write_json(json_path, results)
    c.save_plot(plot, results, png_path)
    ceiling = results["ceiling"]["rate"]
    rows = []
    for r in results["live"]:
        rows.append([f"{r['writers']} writer(s), live", r["write_rate"], r["delivery_rate"],
                     100 * r["delivery_rate"] / ceiling, r["lag_after_last_write_s"],
                     r["latency_s"]["p50"], r["latency_s"]["p99"], r["lost"],
                     r["pod_cpu_percent"]])
    b = results["backlog"]
    rows.append(["backlog (agent restarted)", None, b["delivery_rate"],
                 100 * b["delivery_rate"] / ceiling, None, None, None, b["lost"], None])
    rows.append(["ceiling: read + orjson.loads", None, ceiling, 100.0, None, None, None, None,
                 None])
    print()
    print(c.table(["run", "written/s", "delivered/s", "% ceiling", "lag s", "p50 s",
                   "p99 s", "lost", "pod CPU %"], rows,
                  title=f"{results['events_per_run']:,} events per run. {c.machine_line()}"))
    print(f"duplicates at the intake: {results['duplicates']}")
    print(f"results: {json_path}, {png_path}")


if __name__ == "__main__":
    main()
