"""kubesim load figures (run by hand): ``python bench/kubesim_bench.py [--events 50000]``.

Starts ``kubesim serve`` as its own process (so client and server do not share a GIL) and
measures, over real HTTP:

1. writes/s: ConfigMap creates then updates from concurrent clients;
2. the same writes with 200 watches open, and how long until every watcher saw the last one;
3. seeding N Events (creates/s), then listing them all paginated by 500;
4. one watch replaying the retained history of N events (events/s delivered).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

TOKEN = "bench-token"


async def _gather_limited(n: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            await job(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


class Bench:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = session

    async def request(self, method: str, path: str, body: Any = None,
                      expect: tuple[int, ...] = (200, 201)) -> dict[str, Any]:
        data = orjson.dumps(body) if body is not None else None
        async with self.http.request(method, self.url + path, data=data) as resp:
            raw = await resp.read()
            if resp.status not in expect:
                raise RuntimeError(f"{method} {path}: {resp.status} {raw[:200]!r}")
            return orjson.loads(raw)

    async def writes(self, n: int, concurrency: int = 32, prefix: str = "w") -> tuple[float, float]:
        path = "/api/v1/namespaces/default/configmaps"
        start = time.perf_counter()
        await _gather_limited(n, concurrency, lambda i: self.request(
            "POST", path, {"metadata": {"name": f"{prefix}-{i}"}, "data": {"i": str(i)}}))
        creates = n / (time.perf_counter() - start)
        start = time.perf_counter()
        await _gather_limited(n, concurrency, lambda i: self.request(
            "PUT", f"{path}/{prefix}-{i}", {"metadata": {"name": f"{prefix}-{i}"},
                                             "data": {"i": str(i), "v": "2"}}))
        return creates, n / (time.perf_counter() - start)

    async def watched_writes(self, watchers: int, n: int) -> tuple[float, float, int]:
        rv = (await self.request("GET", "/api/v1/namespaces/default/configmaps?limit=1")
              )["metadata"]["resourceVersion"]
        seen = 0
        done_at: list[float] = []
        ready = asyncio.Event()
        opened = 0

        async def watch() -> None:
            nonlocal seen, opened
            url = (f"{self.url}/api/v1/namespaces/default/configmaps?watch=1&"
                   f"resourceVersion={rv}&timeoutSeconds=120")
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
                opened += 1
                if opened == watchers:
                    ready.set()
                buffer = b""
                added = 0  # the n writes may commit in any order: count them, all of them
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        seen += 1
                        added += b'"ADDED"' in line
                        if added == n:
                            done_at.append(time.perf_counter())
                            return

        tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
        await asyncio.wait_for(ready.wait(), 60)
        start = time.perf_counter()
        await _gather_limited(n, 32, lambda i: self.request(
            "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": f"ww-{i}"}}))
        writes_done = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        return n / (writes_done - start), max(done_at) - writes_done, seen

    async def seed_events(self, n: int) -> tuple[float, int]:
        path = "/api/v1/namespaces/default/events"
        first = await self.request("POST", path, _event(0))
        start = time.perf_counter()
        await _gather_limited(n - 1, 64, lambda i: self.request("POST", path, _event(i + 1)))
        return (n - 1) / (time.perf_counter() - start), int(first["metadata"]["resourceVersion"])

    async def paginate(self, page: int) -> tuple[float, int, int]:
        token, items, pages = "", 0, 0
        start = time.perf_counter()
        while True:
            query = f"limit={page}" + (f"&continue={token}" if token else "")
            body = await self.request("GET", f"/api/v1/namespaces/default/events?{query}")
            items += len(body["items"])
            pages += 1
            token = body["metadata"].get("continue", "")
            if not token:
                return time.perf_counter() - start, items, pages

    async def replay(self, from_rv: int, expected: int) -> tuple[float, int]:
        url = (f"{self.url}/api/v1/namespaces/default/events?watch=1&"
               f"resourceVersion={from_rv - 1}&timeoutSeconds=120")
        count = 0
        start = time.perf_counter()
        async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            async for chunk in resp.content.iter_any():
                count += chunk.count(b"\n")
                if count >= expected:
                    break
        return time.perf_counter() - start, count


def _event(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"bench.{i:06d}"}, "reason": "Bench", "type": "Normal",
            "message": f"benchmark event number {i} with a message of typical length",
            "count": 1, "source": {"component": "bench"},
            "firstTimestamp": "2024-05-01T10:00:00Z", "lastTimestamp": "2024-05-01T10:00:00Z",
            "involvedObject": {"kind": "Pod", "name": f"pod-{i % 100}", "namespace": "default",
                               "uid": f"uid-{i % 100}", "apiVersion": "v1"}}


async def run(args: argparse.Namespace, url: str) -> list[tuple[str, str]]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    rows: list[tuple[str, str]] = []
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        bench = Bench(url, session)
        creates, updates = await bench.writes(args.writes)
        rows.append((f"ConfigMap creates ({args.writes}, 32 clients)", f"{creates:,.0f} /s"))
        rows.append((f"ConfigMap updates ({args.writes}, 32 clients)", f"{updates:,.0f} /s"))
        rate, lag, seen = await bench.watched_writes(args.watchers, args.watched_writes)
        rows.append((f"creates with {args.watchers} watches open", f"{rate:,.0f} /s"))
        rows.append((f"  all {args.watchers} watchers had the last write after",
                     f"{lag * 1000:,.0f} ms"))
        rows.append(("  events delivered to watchers", f"{seen:,}"))
        seed_rate, first_rv = await bench.seed_events(args.events)
        rows.append((f"Event creates while seeding {args.events:,} (64 clients)",
                     f"{seed_rate:,.0f} /s"))
        elapsed, items, pages = await bench.paginate(500)
        rows.append((f"list {items:,} events by 500 ({pages} pages)",
                     f"{elapsed:.2f} s ({items / elapsed:,.0f} items/s)"))
        elapsed, count = await bench.replay(first_rv, args.events)
        rows.append((f"watch replay of {count:,} retained events, one client",
                     f"{count / elapsed:,.0f} events/s ({elapsed:.2f} s)"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--watched-writes", type=int, default=1000)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "kubesim", "serve", "--admin-token", TOKEN,
         "--history", str(args.events + 10), "--event-ttl", "3600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[1]
        rows = asyncio.run(run(args, url))
    finally:
        server.terminate()
        server.wait(timeout=15)
    width = max(len(r[0]) for r in rows)
    print(f"{'kubesim benchmark':<{width}}  result")
    print("-" * (width + 30))
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
