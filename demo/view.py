"""What the demo shows: a live ``rich`` table on a terminal, plain timestamped lines elsewhere.

Both views get the same ``Frame`` a few times a second and the same timeline notes (leader
elected, signal sent, lock taken over...). The plain view prints every note and a progress
line every few seconds, so a log or CI run reads as the story in order.
"""

from __future__ import annotations

import re
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from demo.intake import IntakeSnapshot
from demo.observe import Observed

__all__ = ["Frame", "LiveView", "PlainView", "View", "make_view"]

_CHECK_STATUS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
_PROGRESS_EVERY_S = 4.0
_BOLD_MARKDOWN = re.compile(r"\*\*(.+?)\*\*")


@dataclass(frozen=True, slots=True)
class Frame:
    elapsed: float
    phase: str
    observed: Observed
    intake: IntakeSnapshot
    generated: int
    generator_errors: int
    leader: str
    """The replica name holding the lock ("" if none)."""


class View(Protocol):
    def note(self, text: str) -> None: ...
    def refresh(self, frame: Frame) -> None: ...
    def close(self) -> None: ...
    def show(self, text: str) -> None: ...


def make_view(header: str, started: float, stream: TextIO | None = None) -> View:
    """A live table if ``stream`` (stdout) is a terminal, else plain lines; times are
    seconds since ``started`` (``time.monotonic()`` at the command's start)."""
    stream = stream or sys.stdout
    if stream.isatty():
        return LiveView(header, started, Console(file=stream))
    return PlainView(header, started, stream)


class PlainView:
    def __init__(self, header: str, started: float, stream: TextIO) -> None:
        self._stream = stream
        self._started = started
        self._next_progress = time.monotonic() + _PROGRESS_EVERY_S
        self.show(header)

    def _line(self, text: str) -> None:
        self._stream.write(f"[{time.monotonic() - self._started:6.1f}s] {text}\n")
        self._stream.flush()

    def note(self, text: str) -> None:
        self._line(text)

    def refresh(self, frame: Frame) -> None:
        now = time.monotonic()
        if now < self._next_progress:
            return
        self._next_progress = now + _PROGRESS_EVERY_S
        i = frame.intake
        token = frame.observed.token or "-"
        latest = f" · latest: {i.recent[-1].title}" if i.recent else ""
        self._line(f"{frame.phase}: leader {frame.leader or '-'} · events generated "
                   f"{frame.generated}, delivered {i.delivered} · token {token} · "
                   f"service checks {i.service_checks}{latest}")

    def close(self) -> None:
        pass

    def show(self, text: str) -> None:
        self._stream.write(text.rstrip("\n") + "\n")
        self._stream.flush()


class LiveView:
    def __init__(self, header: str, started: float, console: Console) -> None:
        self._console = console
        self._header = header
        self._notes: deque[str] = deque(maxlen=8)
        self._started = started
        self._live = Live(Text(header), console=console, auto_refresh=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self._started:5.1f}s  {text}"
        if self._live.is_started:
            self._notes.append(line)
        else:  # after the summary: straight to the terminal
            self._console.print(Text(line), soft_wrap=True)

    def refresh(self, frame: Frame) -> None:
        self._live.update(self._render(frame), refresh=True)

    def close(self) -> None:
        self._live.stop()

    def show(self, text: str) -> None:
        # soft_wrap: the terminal wraps long lines, so a copied summary stays one line each
        self._console.print(Text(text.rstrip("\n")), soft_wrap=True)

    def _render(self, frame: Frame) -> Group:
        o, i = frame.observed, frame.intake
        replicas = Table(title="agent replicas (python -m supervisor run)", title_justify="left",
                         expand=False)
        for column in ("replica", "pid", "role", "workers (state, restarts)", "starts"):
            replicas.add_column(column)
        for r in o.replicas:
            role = Text(r.role.upper() if r.role == "leader" else r.role,
                        style="bold green" if r.role == "leader" else
                        "dim" if r.role in ("stopped", "starting") else "")
            workers = ", ".join(f"{k} {s} ({n})" for k, s, n in r.workers) or "-"
            replicas.add_row(r.name, str(r.pid or "-"), role, workers, str(r.starts))

        flow = Table.grid(padding=(0, 2))
        flow.add_column(style="bold")
        flow.add_column()
        flow.add_row("phase", f"{frame.phase}  ({frame.elapsed:.0f}s)")
        flow.add_row("lock", f"{o.holder or '(free)'} · leaderTransitions {o.transitions}")
        written = ("" if o.token_written_at is None
                   else f" · written {time.monotonic() - o.token_written_at:.1f}s ago")
        flow.add_row("token", f"ConfigMap datadogtoken event.tokenKey={o.token or '-'} "
                              f"{o.token_timestamp}{written} · {o.token_writes} checkpoints")
        in_flight = max(0, frame.generated - i.delivered)
        errors = f" · {frame.generator_errors} API errors" if frame.generator_errors else ""
        flow.add_row("events", f"generated {frame.generated} · delivered {i.delivered} · "
                               f"in flight {in_flight}{errors}")
        checks = ", ".join(f"{name.split('.')[0]} {_CHECK_STATUS.get(s, s)}"
                           for name, s in sorted(i.check_statuses.items())[:3])
        flow.add_row("intake", f"{i.payloads} payloads · {i.datadog_events} Datadog events · "
                               f"{i.service_checks} service checks {checks}")

        recent = Table(title="latest Datadog events at the intake", title_justify="left",
                       expand=True)
        recent.add_column("from", no_wrap=True, min_width=7)
        recent.add_column("title", overflow="ellipsis", no_wrap=True, ratio=2)
        recent.add_column("first line", overflow="ellipsis", no_wrap=True, ratio=3)
        for r in reversed(i.recent):
            style = "yellow" if r.alert_type == "warning" else ""
            recent.add_row(r.sender, Text(r.title, style=style),
                           _BOLD_MARKDOWN.sub(r"\1", r.first_line)[:120])

        timeline = Text("\n".join(self._notes) or "-")
        return Group(Text(self._header, style="bold"), replicas, flow, recent,
                     Text("timeline", style="bold"), timeline)
