"""The agent's surroundings for benchmarks, each in a process of its own (no shared GIL):

    Sim ...... ``kubesim serve`` (the API server); admin calls and request counts over HTTP
    Intake ... a Datadog intake answering 202; records when each event marker first arrived
               and from which replica (the payload's ``internalHostname``)
    Writer ... threads creating core/v1 Events over raw HTTP, paced or as fast as they can;
               every event's message carries the marker ``bm<id>x``

Every time is ``time.time()``: the same clock in every process and in the agent's logs.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import urllib3

__all__ = ["API_KEY", "Intake", "Sim", "Writer", "event_body"]

API_KEY = "bench0123456789abcdef0123456789ab"
MARKER = re.compile(rb"bm(\d+)x")
HOSTNAME = re.compile(rb'"internalHostname":\s*"([^"]*)"')
MP = get_context("spawn")


# -- kubesim --------------------------------------------------------------------------------

class Sim:
    """``python -m kubesim serve`` in a subprocess; ``with Sim(workdir) as sim: ...``."""

    def __init__(self, workdir: Path, *, history: int = 200_000, bookmark_s: float = 60.0,
                 event_ttl_s: float = 3600.0) -> None:
        self.workdir = workdir
        self.token = secrets.token_hex(16)
        self.kubeconfig = str(workdir / "kubesim.kubeconfig")
        self._args = ["--history", str(history), "--bookmark-interval", str(bookmark_s),
                      "--event-ttl", str(event_ttl_s)]
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self.http = urllib3.PoolManager(maxsize=4, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})

    def __enter__(self) -> Sim:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubesim", "serve", f"--admin-token={self.token}",
             "--kubeconfig", self.kubeconfig, *self._args],
            stdout=subprocess.PIPE, stderr=open(self.workdir / "kubesim.log", "w"),
            text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"kubesim did not start: {line!r}")
        self.url = line.split()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def request(self, method: str, path: str, body: Any = None,
                expect: tuple[int, ...] = (200, 201)) -> Any:
        data = orjson.dumps(body) if body is not None else None
        resp = self.http.request(method, self.url + path, body=data, timeout=30, retries=False)
        if resp.status not in expect:
            raise RuntimeError(f"{method} {path}: {resp.status} {resp.data[:200]!r}")
        return orjson.loads(resp.data) if resp.data else None

    def counts(self) -> dict[str, Any]:
        return self.request("GET", "/_kubesim/counts")

    def reset_counts(self) -> None:
        self.request("DELETE", "/_kubesim/counts")

    def info(self) -> dict[str, Any]:
        return self.request("GET", "/_kubesim/info")

    def resource_version(self) -> int:
        return int(self.info()["resourceVersion"])

    def set_token(self, resource_version: int, namespace: str = "default") -> None:
        """Write ConfigMap ``datadogtoken`` so that the next leader resumes from there."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {"metadata": {"name": "datadogtoken", "namespace": namespace},
                "data": {"event.tokenKey": str(resource_version),
                         "event.tokenTimestamp": stamp}}
        path = f"/api/v1/namespaces/{namespace}/configmaps"
        with contextlib.suppress(RuntimeError):
            self.request("DELETE", f"{path}/datadogtoken", expect=(200, 202, 404))
        self.request("POST", path, body)


# -- the intake -----------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    lock = threading.Lock()
    first: dict[int, float]
    dups = 0
    requests = 0
    arrivals: list[tuple[float, str, int]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        at = time.time()
        if self.headers.get("Content-Encoding") == "deflate":
            body = zlib.decompress(body)
        ids = [int(m) for m in MARKER.findall(body)]
        found = HOSTNAME.search(body)
        sender = found.group(1).decode() if found else ""
        server = self.server
        with server.lock:
            server.requests += 1
            if self.path.startswith("/intake"):
                server.arrivals.append((at, sender, len(ids)))
            first = server.first
            for i in ids:
                if i in first:
                    server.dups += 1
                else:
                    first[i] = at
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "15")
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _intake_main(conn: Connection) -> None:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.first, server.arrivals = {}, []
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    conn.send(f"http://127.0.0.1:{server.server_address[1]}")
    while True:
        try:
            command, *args = conn.recv()
        except EOFError:
            return
        with server.lock:
            if command == "stats":
                conn.send({"unique": len(server.first), "dups": server.dups,
                           "requests": server.requests})
            elif command == "first":
                lo, hi = args
                conn.send({i: t for i, t in server.first.items() if lo <= i < hi})
            elif command == "arrivals":
                (since,) = args
                conn.send([a for a in server.arrivals if a[0] >= since])
            elif command == "reset":
                server.first, server.arrivals = {}, []
                server.dups = server.requests = 0
                conn.send(None)
            else:
                conn.send(None)
                return


class Intake:
    """The intake process: ``url``; ``stats()``, ``first(lo, hi)``, ``arrivals(since)``."""

    def __init__(self) -> None:
        self.conn, child = MP.Pipe()
        self.process = MP.Process(target=_intake_main, args=(child,), daemon=True,
                                  name="bench-intake")
        self.process.start()
        child.close()
        self.url = self.conn.recv()
        self._lock = threading.Lock()

    def ask(self, *message: Any) -> Any:
        with self._lock:
            self.conn.send(message)
            return self.conn.recv()

    def stats(self) -> dict[str, int]:
        return self.ask("stats")

    def first(self, lo: int = 0, hi: int = 1 << 62) -> dict[int, float]:
        """Marker id -> when it first arrived, for ids in [lo, hi)."""
        return self.ask("first", lo, hi)

    def arrivals(self, since: float = 0.0) -> list[tuple[float, str, int]]:
        """(time, sender hostname, markers) of every ``/intake/`` request since ``since``."""
        return self.ask("arrivals", since)

    def reset(self) -> None:
        self.ask("reset")

    def wait_markers(self, ids: range, timeout: float) -> dict[int, float]:
        """Wait until every marker in ``ids`` arrived (or the timeout); returns what did."""
        deadline = time.time() + timeout
        while True:
            got = self.first(ids.start, ids.stop)
            if len(got) >= len(ids) or time.time() > deadline:
                return got
            time.sleep(0.1)

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self.ask("stop")
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


# -- event writers --------------------------------------------------------------------------

def event_body(i: int, *, objects: int = 200, namespace: str = "default") -> dict[str, Any]:
    """A kubelet-style Event (~700 bytes as stored) about one of ``objects`` Pods."""
    obj = i % objects
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    node = f"node-{obj % 7}"
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"app-{obj}-6d4cf56db6-x2x9k.{i:016x}", "namespace": namespace},
        "involvedObject": {"kind": "Pod", "namespace": namespace,
                           "name": f"app-{obj}-6d4cf56db6-x2x9k", "uid": f"uid-pod-{obj:06d}",
                           "apiVersion": "v1", "fieldPath": "spec.containers{app}"},
        "reason": "Started", "type": "Normal", "count": 1,
        "message": f"Started container app (bench event bm{i}x)",
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet", "reportingInstance": node,
        "firstTimestamp": stamp, "lastTimestamp": stamp,
    }


class _WriteRun:
    """One ``write`` command: threads take the next id, wait for its slot, POST it."""

    def __init__(self, url: str, token: str, *, start_id: int, count: int, rate: float,
                 duration: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.start_id, self.rate = start_id, rate
        self.last = start_id + count if count else None
        self.t0 = time.time() + 0.05
        self.end = self.t0 + duration if duration else None
        self.stop = threading.Event()
        self.ids = itertools.count(start_id)
        self.lock = threading.Lock()
        self.records: list[tuple[int, float, float]] = []
        self.errors: list[str] = []

    def work(self) -> None:
        pool = urllib3.HTTPConnectionPool(self.host, self.port, maxsize=1, headers=self.headers,
                                          retries=False, timeout=30)
        mine: list[tuple[int, float, float]] = []
        while not self.stop.is_set():
            with self.lock:
                i = next(self.ids)
            if self.last is not None and i >= self.last:
                break
            if self.rate:
                due = self.t0 + (i - self.start_id) / self.rate
                if self.end is not None and due >= self.end:
                    break
                delay = due - time.time()
                if delay > 0 and self.stop.wait(delay):
                    break
            sent = time.time()
            try:
                resp = pool.request("POST", "/api/v1/namespaces/default/events",
                                    body=orjson.dumps(event_body(i)))
                if resp.status == 201:
                    mine.append((i, sent, time.time()))
                else:
                    self.errors.append(f"{resp.status} {resp.data[:100]!r}")
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self.errors.append(repr(exc)[:100])
        with self.lock:
            self.records.extend(mine)
        pool.close()


def _writer_main(conn: Connection, url: str, token: str) -> None:
    while True:
        try:
            command, *args = conn.recv()
        except EOFError:
            return
        if command == "stop":
            continue  # came after the writing had ended by itself
        if command != "write":
            return
        start_id, count, rate, threads, duration = args
        run = _WriteRun(url, token, start_id=start_id, count=count, rate=rate,
                        duration=duration)
        workers = [threading.Thread(target=run.work, daemon=True) for _ in range(threads)]
        for w in workers:
            w.start()
        conn.send("started")
        for w in workers:  # until done, or told to stop
            while w.is_alive():
                w.join(0.05)
                if conn.poll():
                    conn.recv()
                    run.stop.set()
        run.records.sort()
        conn.send({"records": run.records, "errors": len(run.errors),
                   "first_errors": run.errors[:5]})


class Writer:
    """A process with writer threads. ``start(...)`` then ``wait()`` or ``stop()``; both
    return ``{"records": [(id, sent, answered)], "errors": n}`` for events created (201)."""

    def __init__(self, sim: Sim) -> None:
        self.conn, child = MP.Pipe()
        self.process = MP.Process(target=_writer_main, args=(child, sim.url, sim.token),
                                  daemon=True, name="bench-writer")
        self.process.start()
        child.close()
        self._running = False

    def start(self, *, start_id: int, count: int = 0, rate: float = 0.0, threads: int = 4,
              duration: float = 0.0) -> None:
        """``rate`` events/s (0: as fast as the threads can), until ``count`` events or
        ``duration`` seconds (0: no limit) or ``stop()``."""
        self.conn.send(("write", start_id, count, rate, threads, duration))
        assert self.conn.recv() == "started"
        self._running = True

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise TimeoutError("writer still writing")
        self._running = False
        return self.conn.recv()

    def stop(self) -> dict[str, Any]:
        """Stop writing (if still at it) and return what was written."""
        self.conn.send(("stop",))
        return self.wait(60)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._running:
                self.stop()
            self.conn.send(("exit",))
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
