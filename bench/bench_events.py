"""Events/s from a kubesim watch to an intake acknowledging, side by side, by hand:

    python bench/bench_events.py [-n 50000] [--naive-n 50000] [--rss-n 100000] [--skip-naive]

One process each for kubesim, the intake and the pipeline under test (no GIL shared):

    ours ............ workers.events (EventJob with a real WorkerContext), bundled, zlib 1
    ours, default gc  the same with the interpreter's GC thresholds (700/10/10), no freeze
    naive ........... kubernetes.watch.Watch().stream(CoreV1Api.list_event_for_all_namespaces)
                      -> V1Event models -> one JSON POST per event (what popular exporters do)
    ceiling ......... the same watch stream read in 64 KiB reads + orjson.loads, nothing else

Every pipeline watches from the same resourceVersion, so kubesim replays the same ~1.2 KB
events (bench_bundles.make_events) from its history. Rates run from "go" to the moment the
intake acknowledged the last event (markers counted in the decompressed bodies); "cpu"
is the CPU time (user + system, all threads) the pipeline's process spent per event, a
figure less at the mercy of other load on the machine than the rates; "sim" and "intake"
are the CPU kubesim and the intake spent per event meanwhile. With them the script prints
the CPU budget: all three share this machine's cores, so no pipeline that spends that much
CPU per event can go faster than cores / (pipeline + sim + intake), however well it spreads
its work over the cores. Then:
RSS of our worker while ``--rss-n`` events pass, and the catch-up of a 10,000-event backlog
after a 410 (watch position compacted away -> paginated re-list -> delivery).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bundles import make_events

MARKER = b"marker-"
API_KEY = "bench0123456789abcdef0123456789ab"
MP = get_context("spawn")


# -- kubesim, in its own process ----------------------------------------------------------

def sim_main(conn: Connection, history: int) -> None:
    from kubesim.runner import KubeSim

    sim = KubeSim(history=history, event_ttl=86400, bookmark_interval=60).start()
    conn.send((sim.kubeconfig, sim.store.rv))
    seed = 0
    while True:
        command, *args = conn.recv()
        if command == "populate":
            (n,) = args
            seed += 1
            by_ns: dict[str, list[dict[str, Any]]] = {}
            for raw in make_events(n, objects=5000, seed=seed):
                obj = orjson.loads(raw)
                meta = obj["metadata"]
                del meta["resourceVersion"], meta["uid"]
                meta["name"] += f"-{seed}"
                by_ns.setdefault(meta["namespace"], []).append(obj)
            before = sim.store.rv
            for ns, objs in by_ns.items():
                sim.create_many("events", objs, ns)
            del by_ns
            gc.collect()
            conn.send((before, sim.store.rv))
        elif command == "compact":
            conn.send(sim.compact())
        else:
            sim.stop()
            conn.send(None)
            return


# -- the intake, in its own process --------------------------------------------------------

class _Intake(ThreadingHTTPServer):
    daemon_threads = True
    count = 0
    target = 0
    done_at = 0.0
    lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Intake

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "deflate":
            body = zlib.decompress(body)
        n = body.count(MARKER)
        server = self.server
        with server.lock:
            server.count += n
            if server.target and not server.done_at and server.count >= server.target:
                server.done_at = time.monotonic()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "15")
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


def intake_main(conn: Connection) -> None:
    server = _Intake(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.send(f"http://127.0.0.1:{server.server_address[1]}")
    while True:
        command, *args = conn.recv()
        with server.lock:
            if command == "expect":
                server.count, server.target, server.done_at = 0, args[0], 0.0
                conn.send(None)
            elif command == "status":
                conn.send((server.count, server.done_at))
            else:
                conn.send(None)
                return


# -- the pipelines under test, each in its own process ------------------------------------

def ours_main(conn: Connection, kubeconfig: str, intake_url: str, rv: str, tuned: bool) -> None:
    from multiprocessing import Pipe

    from workers import events
    from workers.loop import WorkerContext, _Channel
    from workers.protocol import Token
    from workers.settings import EventSettings, IntakeSettings, KubeSettings, WorkerSettings

    if not tuned:
        events._GC_THRESHOLD0 = 0
        gc.freeze = lambda: None
    settings = WorkerSettings(
        kube=KubeSettings(kubeconfig_path=kubeconfig),
        intake=IntakeSettings(api_key=API_KEY, dd_url=intake_url, hostname="bench"),
        events=EventSettings(),
    )
    progress, worker_end = Pipe(duplex=False)
    ctx = WorkerContext(name="events", settings=settings, token=Token(rv),
                        channel=_Channel(worker_end))
    threading.Thread(target=_drain, args=(progress,), daemon=True).start()
    job = events.EventJob(ctx)
    conn.send("ready")
    conn.recv()  # go
    thread = threading.Thread(target=job.run, daemon=True)
    thread.start()
    conn.recv()  # stop
    ctx.stopping.set()
    thread.join(10)
    conn.send(dict(ctx._heartbeat().stats))


def _drain(conn: Connection) -> None:
    try:
        while True:
            conn.recv()
    except (EOFError, OSError):
        pass


def ceiling_main(conn: Connection, kubeconfig: str, rv: str, n: int) -> None:
    from workers.kubeapi import KubeApi, watch_lines
    from workers.settings import KubeSettings

    api = KubeApi.from_settings(KubeSettings(kubeconfig_path=kubeconfig), user_agent="ceiling")
    loads = orjson.loads
    conn.send("ready")
    conn.recv()
    t0 = time.monotonic()
    cpu0 = time.process_time()
    response = api.open("GET", "/api/v1/events", query={"watch": True, "resourceVersion": rv,
                                                        "timeoutSeconds": 600}, timeout=60)
    for seen, line in enumerate(watch_lines(response), 1):
        loads(line)
        if seen >= n:
            break
    conn.send((time.monotonic() - t0, time.process_time() - cpu0))
    response.close()


def naive_main(conn: Connection, kubeconfig: str, intake_url: str, rv: str, n: int) -> None:
    import json

    import urllib3
    from kubernetes import client, config, watch

    api_client = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api_client)
    http = urllib3.PoolManager()
    conn.send("ready")
    conn.recv()
    seen = 0
    for item in watch.Watch().stream(core.list_event_for_all_namespaces, resource_version=rv,
                                     timeout_seconds=600):
        ev = item["object"]  # a V1Event model
        if item["type"] not in ("ADDED", "MODIFIED"):
            continue
        obj = ev.involved_object
        payload = {"events": {"kubernetes": [{
            "msg_title": f"{obj.kind} {obj.namespace}/{obj.name}: {ev.reason}",
            "msg_text": ev.message,
            "timestamp": int(ev.last_timestamp.timestamp()),
            "alert_type": "warning" if ev.type == "Warning" else "info",
            "source_type_name": "kubernetes", "host": ev.source.host,
            "tags": [f"kube_namespace:{obj.namespace}", f"kube_kind:{obj.kind}"],
        }]}}
        http.request("POST", f"{intake_url}/intake/", body=json.dumps(payload).encode(),
                     headers={"Content-Type": "application/json", "DD-API-KEY": API_KEY})
        seen += 1
        if seen >= n:
            break
    conn.send("done")


# -- the conductor ---------------------------------------------------------------------------

class Child:
    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        self.conn, child_conn = MP.Pipe()
        self.process = MP.Process(target=target, args=(child_conn, *args), daemon=True)
        self.process.start()

    def ask(self, *message: Any) -> Any:
        self.conn.send(message)
        return self.conn.recv()

    def close(self) -> None:
        self.process.join(15)
        if self.process.is_alive():
            self.process.kill()


def wait_intake(intake: Child, timeout: float, on_tick: Callable[[], None] | None = None
                ) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count, done_at = intake.ask("status")
        if done_at:
            return done_at
        if on_tick:
            on_tick()
        time.sleep(0.05)
    raise TimeoutError(f"intake saw only {count} events")


class CpuMeter:
    """CPU time (user + system, all threads) processes spent since it was made, per event."""

    def __init__(self, **procs: Child) -> None:
        self.procs = {name: psutil.Process(c.process.pid) for name, c in procs.items()}
        self.at = {name: _cpu(p) for name, p in self.procs.items()}

    def per_event(self, n: int) -> dict[str, float]:
        return {f"{name}_us": (_cpu(p) - self.at[name]) / n * 1e6
                for name, p in self.procs.items()}


def run_ours(kubeconfig: str, sim: Child, intake: Child, url: str, rv: int, n: int, *,
             tuned: bool = True, sample_rss: bool = False) -> dict[str, Any]:
    intake.ask("expect", n)
    child = Child(ours_main, kubeconfig, url, str(rv), tuned)
    assert child.conn.recv() == "ready"
    proc = psutil.Process(child.process.pid)
    rss: list[int] = [proc.memory_info().rss]
    meter = CpuMeter(cpu=child, sim=sim, intake=intake)
    t0 = time.monotonic()
    child.conn.send("go")
    done = wait_intake(intake, 600, (lambda: rss.append(proc.memory_info().rss))
                       if sample_rss else None)
    cpu = meter.per_event(n)
    rss.append(proc.memory_info().rss)
    stats = child.ask("stop")
    child.close()
    return {"seconds": done - t0, "rate": n / (done - t0), "rss": rss, "stats": stats, **cpu}


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def run_ceiling(kubeconfig: str, rv: int, n: int, sim: Child | None = None) -> dict[str, Any]:
    """The ceiling's rate and CPU per event (and kubesim's, if ``sim`` is given)."""
    child = Child(ceiling_main, kubeconfig, str(rv), n)
    assert child.conn.recv() == "ready"
    meter = CpuMeter(**({"sim": sim} if sim else {}))
    seconds, cpu = child.ask("go")
    return_value = {"seconds": seconds, "rate": n / seconds, "cpu_us": cpu / n * 1e6,
                    **meter.per_event(n)}
    child.close()
    return return_value


def run_naive(kubeconfig: str, sim: Child, intake: Child, url: str, rv: int, n: int
              ) -> dict[str, Any]:
    intake.ask("expect", n)
    child = Child(naive_main, kubeconfig, url, str(rv), n)
    assert child.conn.recv() == "ready"
    meter = CpuMeter(cpu=child, sim=sim, intake=intake)
    t0 = time.monotonic()
    child.conn.send("go")
    done = wait_intake(intake, 1800)
    cpu = meter.per_event(n)
    child.conn.recv()
    child.close()
    return {"seconds": done - t0, "rate": n / (done - t0), **cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="events per throughput run")
    parser.add_argument("--naive-n", type=int, default=50_000, help="events for the naive run")
    parser.add_argument("--rss-n", type=int, default=100_000, help="events for the RSS run")
    parser.add_argument("--backlog", type=int, default=10_000, help="events behind the 410")
    parser.add_argument("--repeat", type=int, default=2, help="runs of ours/ceiling (best)")
    parser.add_argument("--skip-naive", action="store_true",
                        help="leave out the (slow) naive pipeline while iterating")
    args = parser.parse_args()
    n = args.n
    intake = Child(intake_main)
    url = intake.conn.recv()
    cores = len(os.sched_getaffinity(0))  # the CPUs this process may use, not the host's
    print(f"{cores} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"populating kubesim with {n} events...", flush=True)

    sim = Child(sim_main, n + args.backlog + 1000)
    kubeconfig, _ = sim.conn.recv()
    rv0, rv1 = sim.ask("populate", n)
    rows: list[tuple[str, dict[str, Any]]] = []
    ceiling = max((run_ceiling(kubeconfig, rv0, n, sim) for _ in range(args.repeat)),
                  key=lambda r: r["rate"])
    ours = max((run_ours(kubeconfig, sim, intake, url, rv0, n) for _ in range(args.repeat)),
               key=lambda r: r["rate"])
    untuned = run_ours(kubeconfig, sim, intake, url, rv0, n, tuned=False)
    rows = [("ceiling: read + orjson.loads", ceiling), ("ours (workers.events)", ours),
            ("ours, default GC", untuned)]
    naive = None
    if not args.skip_naive:
        naive = run_naive(kubeconfig, sim, intake, url, rv0, args.naive_n)
        rows.append(("naive: V1Event + POST each", naive))

    # 410 catch-up: a backlog written after our token, then the history compacted away.
    sim.ask("populate", args.backlog)
    sim.ask("compact")
    catch_up = run_ours(kubeconfig, sim, intake, url, rv1, args.backlog)
    sim.ask("stop")
    sim.close()

    naive_note = f"naive on {args.naive_n} events" if naive else "naive skipped"
    print(f"\n{n} events of ~1.2 KB, watch from kubesim's history; best of {args.repeat}"
          f" for ours and the ceiling; {naive_note}\n")
    head = (f"{'pipeline':<32}{'events/s':>10}{'seconds':>9}{'x naive':>9}{'% ceiling':>11}"
            f"{'cpu us/ev':>11}{'sim':>8}{'intake':>8}{'budget/s':>10}{'%':>5}")
    print(head)
    print("-" * len(head))
    for name, r in rows:
        x_naive = f"{r['rate'] / naive['rate']:>9.1f}" if naive else f"{'-':>9}"
        total = r["cpu_us"] + r["sim_us"] + r.get("intake_us", 0.0)
        budget = cores * 1e6 / total
        share = 100 * budget / ceiling["rate"]
        intake_us = f"{r['intake_us']:>8.1f}" if "intake_us" in r else f"{'-':>8}"
        print(f"{name:<32}{r['rate']:>10.0f}{r['seconds']:>9.2f}{x_naive}"
              f"{100 * r['rate'] / ceiling['rate']:>10.0f}%{r['cpu_us']:>11.1f}"
              f"{r['sim_us']:>8.1f}{intake_us}{budget:>10.0f}{share:>4.0f}%")
    print(f"\nbudget/s: {cores} cores x 1e6 / (cpu + sim + intake us per event), the most events/s"
          " that CPU per event allows here\n(kubesim and the intake share the cores);"
          " %: that bound as a share of the ceiling's measured rate")
    print(f"\n410 catch-up: {args.backlog} new events behind a compacted token, list of "
          f"{n + args.backlog} events in pages of 500: {catch_up['seconds']:.2f} s to "
          f"acknowledged ({catch_up['stats'].get('relists_total', 0):.0f} re-list)")

    print(f"\nRSS run: populating a fresh kubesim with {args.rss_n} events...", flush=True)
    sim = Child(sim_main, args.rss_n + 1000)
    kubeconfig, _ = sim.conn.recv()
    rv0, _ = sim.ask("populate", args.rss_n)
    rss_run = run_ours(kubeconfig, sim, intake, url, rv0, args.rss_n, sample_rss=True)
    sim.ask("stop")
    sim.close()
    rss = [r / 2**20 for r in rss_run["rss"]]
    quarter = max(1, len(rss) // 4)
    print(f"RSS of the events worker while {args.rss_n} events pass ({rss_run['rate']:.0f}/s,"
          f" {len(rss)} samples): ready {rss[0]:.1f} MiB, max {max(rss):.1f} MiB, "
          f"first quarter max {max(rss[:quarter]):.1f} MiB, last quarter max "
          f"{max(rss[-quarter:]):.1f} MiB, end {rss[-1]:.1f} MiB")
    intake.ask("stop")
    intake.close()


if __name__ == "__main__":
    main()
