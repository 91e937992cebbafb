"""End-to-end latency, event created -> received at the intake, at a steady write rate.

    python bench/bench_latency.py [--quick] [--rate 500] [--seconds 30]

One real agent (``python -m supervisor run``, leader election on, one replica, events
worker) against kubesim and a local intake, each in its own process. A writer process
creates ``--rate`` events/s for ``--seconds`` (8 threads, raw HTTP); each event's latency
is the intake's arrival time minus the moment its POST was sent to the API server (an
upper bound of "created -> received" by the POST's round trip, reported too). Run once
with the default batching (``event_flush_interval`` 1 s, batches of up to 500) and once
with a 0.2 s flush interval. Also the agent pod's CPU (supervisor + fork server + worker)
over the run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import _common as c
from _agents import Agent, agent_env, pod_cpu_s, wait_for
from _cluster import Intake, Sim, Writer

THREADS = 8


def one_run(sim: Sim, intake: Intake, writer: Writer, work: Path, *, flush: float,
            rate: float, seconds: float, base: int) -> dict[str, Any]:
    name = f"flush-{flush * 1000:.0f}ms"
    # A lock of its own: a fresh agent whose lock watch delivers the previous run's release
    # after its own acquire can lead without workers (an elector race, reported).
    env = agent_env(sim, lease_s=15, intake=intake, DD_EVENT_FLUSH_INTERVAL=f"{flush:g}",
                    DD_LEADER_LEASE_NAME=f"lock-{name}")
    agent = Agent(name, env, work).start()
    try:
        # Warm up: a trickle until the agent delivers, so its watch is open.
        writer.start(start_id=base, rate=10, threads=1)
        since = agent.started_at
        wait_for(lambda: any(s == agent.name and n for _, s, n in intake.arrivals(since)), 60,
                 "the agent's first event", alive=[agent])
        writer.stop()
        time.sleep(flush + 0.5)
        cpu0, t0 = pod_cpu_s(agent.pid), time.time()
        start = base + 100_000
        writer.start(start_id=start, rate=rate, threads=THREADS, duration=seconds)
        written = writer.wait(seconds + 60)
        records = written["records"]
        got = intake.wait_markers(range(start, records[-1][0] + 1), 30)
        cpu = pod_cpu_s(agent.pid) - cpu0
        elapsed = time.time() - t0
        state = agent.state() or {}
    finally:
        agent.stop()
    latency = [got[i] - sent for i, sent, _ in records if i in got]
    rtt = [answered - sent for _, sent, answered in records]
    span = records[-1][1] - records[0][1] if len(records) > 1 else float("nan")
    worker = next((w for w in state.get("workers", []) if w.get("kind") == "events"), {})
    return {"flush_interval_s": flush, "target_rate": rate, "seconds": seconds,
            "written": len(records), "write_errors": written["errors"],
            "write_rate": (len(records) - 1) / span if span else float("nan"),
            "delivered": len(got), "lost": sum(1 for i, _, _ in records if i not in got),
            "latency_s": c.summary(latency), "post_rtt_s": c.summary(rtt),
            "pod_cpu_percent": 100 * cpu / elapsed, "worker_stats": worker.get("stats", {}),
            "latencies": [round(x, 4) for x in latency]}


def run(args: Any) -> dict[str, Any]:
    work = c.new_log_dir("latency")
    results: dict[str, Any] = {"machine": c.machine(), "runs": []}
    with Sim(work) as sim:
        intake, writer = Intake(), Writer(sim)
        try:
            for n, flush in enumerate((1.0, 0.2)):
                print(f"flush interval {flush:g} s: {args.rate:g} events/s for "
                      f"{args.seconds:g} s ...", flush=True)
                results["runs"].append(one_run(sim, intake, writer, work, flush=flush,
                                               rate=args.rate, seconds=args.seconds,
                                               base=n * 1_000_000))
            results["duplicates"] = intake.stats()["dups"]
        finally:
            writer.close()
            intake.close()
    c.drop_log_dir(work, args.keep_logs)
    return results


def plot(plt: Any, results: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results["runs"]:
        values = sorted(r["latencies"])
        if not values:
            continue
        ys = [(i + 1) / len(values) for i in range(len(values))]
        ax.plot(values, ys, label=f"flush interval {r['flush_interval_s']:g} s "
                f"(p50 {r['latency_s']['p50']:.2f} s, p99 {r['latency_s']['p99']:.2f} s)")
    ax.set_xlabel("seconds from the API write to the intake")
    ax.set_ylabel("fraction of events")
    ax.set_title(f"end-to-end latency at {results['runs'][0]['target_rate']:g} events/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--rate", type=float, default=500.0, help="events/s written")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of writing per run")
    args = p.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 6.0)
    results = run(args)
    json_path, png_path = c.result_paths(args.out, "bench_latency", args.quick)
    c.save_plot(plot, results, png_path)
    rows = []
    for r in results["runs"]:
        lat = r["latency_s"]
        rows.append([f"{r['flush_interval_s']:g} s", r["write_rate"], r["written"],
                     r["delivered"], r["lost"], lat["p50"] * 1000, lat["p90"] * 1000,
                     lat["p99"] * 1000, lat["max"] * 1000, r["post_rtt_s"]["p50"] * 1000,
                     r["pod_cpu_percent"]])
    c.write_json(json_path, results)
    print()
    print(c.table(["flush interval", "events/s", "written", "delivered", "lost", "p50 ms",
                   "p90 ms", "p99 ms", "max ms", "POST rtt ms", "pod CPU %"], rows,
                  title=f"Event created -> intake received, one agent, {c.machine_line()}"))
    print(f"duplicates at the intake: {results['duplicates']}")
    print(f"results: {json_path}, {png_path}")


if __name__ == "__main__":
    main()
