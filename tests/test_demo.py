"""``kube-event-agent demo`` (``python -m demo``): the whole story as a newcomer runs it.

Real subprocesses all the way down: the demo process starts kubesim, its intake and agent
replicas (each a supervisor with a fork server and workers). Every process seen in the
demo's tree while it runs is recorded, and must be gone once it has exited.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from demo.generator import Generated
from demo.intake import Appearance
from demo.scenario import STARTED_ENV
from demo.summary import tally
from supervisor.cli import DEMO_STARTED_ENV

REPO = Path(__file__).resolve().parents[1]


class DemoProcess:
    """``python -m demo ARGS`` with stdout piped (not a terminal: plain lines)."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if k != "KUBE_EVENT_AGENT_MANIFESTS"}
        environ.update({"TMPDIR": str(tmp_path), **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "demo", *args], cwd=REPO, env=environ, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.family: dict[int, psutil.Process] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def observe(self) -> None:
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.family.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def wait(self, timeout: float) -> int:
        """Wait for the exit, recording the process tree meanwhile."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"demo still running after {timeout}s:\n{self.output}")
            self.observe()
            time.sleep(0.2)
        self._reader.join(5)
        return self.proc.returncode

    def wait_for_line(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            assert self.proc.poll() is None, f"demo exited early:\n{self.output}"
            assert time.monotonic() < deadline, f"no line matching {pattern!r}:\n{self.output}"
            self.observe()
            time.sleep(0.2)

    def survivors(self) -> list[psutil.Process]:
        deadline = time.monotonic() + 5
        while True:
            left = [p for p in self.family.values() if _running(p)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _summary_value(output: str, name: str) -> str:
    match = re.search(rf"^\s+{re.escape(name)}:\s+(.*)$", output, re.MULTILINE)
    assert match, f"no '{name}:' in the summary:\n{output}"
    return match.group(1).strip()


def test_demo_tells_the_whole_story_and_exits_0(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path, "--duration", "20")
    code = demo.wait(timeout=75)
    out = demo.output
    assert code == 0, f"exit {code}\n{out}\nstderr:\n{demo.stderr()}"
    assert not re.search(r"\x1b\[", out), "not a terminal: plain lines, no escape codes"
    # A leader, the graceful hand-over to another replica, the restarted one as follower.
    first = re.search(r"held by (agent-\d)-\w+ \(agent-\d leads", out)
    assert first, out
    signalled = re.search(r"SIGTERM to the leader (agent-\d)", out)
    assert signalled, out
    assert signalled.group(1) == first.group(1)
    take_over = re.search(r"take-over: (agent-\d) holds the lock ([\d.]+)s after the SIGTERM", out)
    assert take_over, out
    assert take_over.group(1) != signalled.group(1)
    assert re.search(rf"{signalled.group(1)} restarted .* rejoins as a follower", out), out
    # The summary, by marker: everything delivered exactly once.
    generated = int(_summary_value(out, "events generated"))
    assert generated > 100, out  # ~20 events/s for 20 s
    assert int(_summary_value(out, "of which repeats").split()[0]) > 10, "rising counts"
    assert int(_summary_value(out, "events delivered")) == generated
    assert int(_summary_value(out, "lost")) == 0
    assert int(_summary_value(out, "duplicated")) == 0
    hand_over = _summary_value(out, "hand-over")
    assert re.search(r"lock taken after [\d.]+s, first event at the intake after [\d.]+s",
                     hand_over), hand_over
    assert _summary_value(out, "result").startswith("PASS")
    # The replicas' logs went to files in the printed directory, not to the terminal.
    log_dir = Path(re.search(r"logs in (\S+)", out).group(1))
    assert log_dir.parent == tmp_path
    logs = {p.name for p in log_dir.glob("agent-*.log")}
    assert {"agent-0.0.log", "agent-1.0.log", "agent-2.0.log",
            f"{signalled.group(1)}.1.log"} == logs
    assert "became leader" in "".join(p.read_text() for p in log_dir.glob("agent-*.log"))
    assert "supervisor.agent" not in out
    assert len(demo.family) >= 6, "three supervisors with their workers were seen"
    assert demo.survivors() == []


def test_ctrl_c_stops_everything_promptly_with_no_orphan(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path, "--duration", "60")
    demo.wait_for_line(r"the event worker delivers", timeout=45)
    for _ in range(5):  # the leader's workers are up: record the whole tree
        demo.observe()
        time.sleep(0.1)
    workers = [p for p in demo.family.values() if _running(p) and p.name() == "events"]
    assert workers, "the leader's events worker was seen"
    sent = time.monotonic()
    demo.proc.send_signal(signal.SIGINT)
    code = demo.wait(timeout=20)
    assert code == 130, demo.output
    assert time.monotonic() - sent < 15, "stopped within the replicas' shutdown grace"
    assert "interrupted: stopping everything" in demo.output
    assert demo.survivors() == []


@pytest.mark.parametrize("how", ["option", "env"])
def test_missing_manifests_is_a_one_line_error(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "no-such-dir"
    if how == "option":
        demo = DemoProcess(tmp_path, "--manifests", str(missing))
    else:
        demo = DemoProcess(tmp_path, env={"KUBE_EVENT_AGENT_MANIFESTS": str(missing)})
    assert demo.wait(timeout=30) == 2
    err = demo.stderr().strip()
    assert err.count("\n") == 0, err
    assert err.startswith("kube-event-agent demo: error: manifests not found:")
    assert str(missing / "rbac") in err
    assert demo.family == {}, "nothing was started"


def test_bad_option_and_help(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path, "--replicas", "1")
    assert demo.wait(timeout=30) == 2
    assert "a hand-over needs a follower" in demo.stderr()
    demo = DemoProcess(tmp_path, "--help")
    assert demo.wait(timeout=30) == 0
    for option in ("--duration", "--replicas", "--keep", "--crash"):
        assert option in demo.output


def test_a_doubled_count_on_a_bundled_line_is_a_duplicate() -> None:
    """The agent's bundles add up identical lines of one flush: count 6 for an Event whose
    count is 3 means that occurrence went out twice."""
    generated = [Generated("ev-000001", 0.0, 1, "Normal", "Pulled"),
                 Generated("ev-000002", 0.0, 3, "Warning", "BackOff"),
                 Generated("ev-000003", 0.0, 1, "Normal", "Started")]
    seen = {
        "ev-000001": [Appearance(1, 0.5, "agent-0"), Appearance(1, 2.0, "agent-1")],
        "ev-000002": [Appearance(6, 0.4, "agent-0")],
        "ev-000009": [Appearance(None, 0.4, "agent-0")],
    }
    t = tally(generated, seen)
    assert (t.generated, t.delivered, t.duplicated, t.lost) == (3, 2, 2, 1)
    assert t.repeats == 1
    assert t.lost_markers == ("ev-000003",)
    assert t.unexpected == 1
    assert t.latency_max_s == pytest.approx(0.5)


def test_the_cli_passes_its_start_time_under_the_name_the_demo_reads() -> None:
    assert DEMO_STARTED_ENV == STARTED_ENV
