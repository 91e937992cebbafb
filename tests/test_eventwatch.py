"""Reading a watch stream: whole lines per read whatever the HTTP chunks, resume positions,
garbled and empty lines, against a real HTTP server whose answers are scripted."""

from __future__ import annotations

import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import Pipe
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson
import pytest
from event_rig import API_KEY, FAST, event, occurrences
from intake_server import LocalIntake
from kubernetes import client as kclient
from polling import wait_for

from workers.events import EventJob
from workers.eventwatch import EventFeed, WatchChunk
from workers.intake import IntakeClient
from workers.kubeapi import KubeApi
from workers.loop import WorkerContext, _Channel
from workers.protocol import Token
from workers.settings import EventSettings, IntakeSettings, KubeSettings, WorkerSettings


class ScriptedWatch:
    """An API server whose watch answers are lists of raw chunks, sent one by one (each
    flushed, a moment apart, so that they arrive as separate reads); once the scripts are
    used up, a watch is held open until the server closes."""

    def __init__(self, scripts: list[list[bytes]]) -> None:
        self.scripts = list(scripts)
        self.watches: list[dict[str, list[str]]] = []
        self.closing = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                owner.watches.append(query)
                script = owner.scripts.pop(0) if owner.scripts else None
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in script or []:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    time.sleep(0.05)
                if script is None:
                    owner.closing.wait(10.0)
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def api(self) -> KubeApi:
        configuration = kclient.Configuration(host=f"http://127.0.0.1:{self.server.server_port}")
        return KubeApi(configuration, user_agent="watch-tests")

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    made: list[ScriptedWatch] = []

    def make(*scripts: list[bytes]) -> ScriptedWatch:
        made.append(ScriptedWatch(list(scripts)))
        return made[-1]

    yield make
    for watch in made:
        watch.close()


def line(i: int, type_: str = "ADDED") -> bytes:
    obj = dict(event(i), kind="Event", apiVersion="v1")
    obj["metadata"] = dict(obj["metadata"], resourceVersion=str(100 + i), uid=f"uid-{i}")
    return orjson.dumps({"type": type_, "object": obj})


def test_reads_are_cut_at_line_ends_whatever_the_chunks(scripted):
    l1, l2, l3, l4 = line(1), line(2), line(3), line(4)
    watch = scripted([l1[:10], l1[10:] + b"\n" + l2 + b"\n" + l3[:5],
                      l3[5:] + b"\nnot json\n\n" + l4])  # the last line has no newline
    out: queue.Queue[object] = queue.Queue()
    stop = threading.Event()
    feed = EventFeed(watch.api(), out, settings=EventSettings(watch_timeout_s=30),
                     resource_version="100", stop=stop, count=lambda key, n: None,
                     on_api_health=lambda problem: None, backoff=FAST)
    thread = threading.Thread(target=feed.run, daemon=True)
    thread.start()
    wait_for(lambda: len(watch.watches) == 2, what="the feed to re-open the watch")
    stop.set()
    feed.interrupt()
    watch.closing.set()
    thread.join(5.0)
    assert not thread.is_alive()
    chunks = []
    while not out.empty():
        chunks.append(out.get())
    assert all(type(c) is WatchChunk and c.data.endswith(b"\n") for c in chunks)
    assert b"".join(c.data for c in chunks) == b"\n".join([l1, l2, l3, b"not json", b"", l4,
                                                           b""])
    assert len(chunks) == 3  # one a read that ended a line, one the unterminated tail
    # Where the stream resumes: the last line that is a watch event, not the garbage.
    assert watch.watches[0]["resourceVersion"] == ["100"]
    assert watch.watches[1]["resourceVersion"] == ["104"]


def test_garbled_and_empty_lines_are_counted_and_the_rest_delivered(scripted):
    watch = scripted([line(1) + b"\n" + b"{not json\n\n" + line(2) + b"\n",
                      b"[1, 2]\n" + line(3) + b"\n"])
    with LocalIntake() as intake:
        settings = IntakeSettings(api_key=API_KEY, dd_url=intake.url, hostname="agent-0")
        job = _Job(watch, settings)
        wait_for(lambda: {(1, 1), (2, 1), (3, 1)} <= set(occurrences(intake)),
                 what="three events at the intake")
        stats = job.stop()
    assert occurrences(intake) == {(1, 1): 1, (2, 1): 1, (3, 1): 1}
    assert stats["watch_malformed_lines_total"] == 2  # "{not json" and "[1, 2]"
    assert stats["events_received_total"] == 3


class _Job:
    """An EventJob on the scripted API server, in a thread."""

    def __init__(self, watch: ScriptedWatch, settings: IntakeSettings) -> None:
        worker = WorkerSettings(kube=KubeSettings(), intake=settings,
                                events=EventSettings(flush_interval_s=0.1, watch_timeout_s=30))
        self.conn, end = Pipe()
        self.ctx = WorkerContext(name="events", settings=worker, token=Token("100"),
                                 channel=_Channel(end))
        job = EventJob(self.ctx, api=watch.api(), watch_backoff=FAST,
                       intake=IntakeClient(settings, backoff=FAST))
        self.thread = threading.Thread(target=job.run, daemon=True)
        self.thread.start()
        self.watch = watch

    def stop(self) -> dict[str, float]:
        self.ctx.stopping.set()
        self.watch.closing.set()
        self.thread.join(10.0)
        assert not self.thread.is_alive()
        beat = self.ctx._heartbeat()
        return dict(beat.stats)
