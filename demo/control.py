"""How the demo is asked to run (``Options``, exit codes) and to stop (``Stopper``)."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "Interrupted", "Options",
           "Stopper"]

EXIT_OK = 0
EXIT_FAILED = 1
"""Something was lost (or duplicated without ``--crash``), or the story could not happen."""
EXIT_USAGE = 2
"""Bad options or missing manifests, before anything started."""
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Options:
    manifests: Path
    duration_s: float = 40.0
    """How long the event stream runs (set-up, drain and summary come on top)."""
    replicas: int = 3
    keep: bool = False
    crash: bool = False
    rate: float = 20.0
    """Occurrences per second the generator writes."""
    lease_s: int = 4
    """Short, so that even a crash take-over (a whole lease) fits the demo."""
    shutdown_timeout_s: float = 10.0
    handover_at: float = 0.4
    """Fraction of the stream after which the leader is stopped."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop everything."""


class Stopper:
    """SIGINT/SIGTERM set a flag the demo's waits check; a second one means "kill now"."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.presses = 0

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.presses += 1
        self.requested.set()

    @property
    def force(self) -> bool:
        return self.presses >= 2

    def sleep(self, seconds: float) -> None:
        """Sleep, or raise ``Interrupted`` as soon as a stop is requested."""
        if self.requested.wait(seconds):
            raise Interrupted
