"""A stand-in for the supervisor's checkpointer, for tests that run a real ``WorkerPool``."""

from __future__ import annotations

import threading

from workers.protocol import Token

__all__ = ["Checkpointer"]


class Checkpointer:
    """The test's stand-in for the supervisor's checkpointer: keeps the newest token."""

    def __init__(self, token: Token | None = None) -> None:
        self.token = token
        self.received: list[Token] = []
        self.handed_out: list[Token | None] = []
        self.lock = threading.Lock()

    def on_progress(self, kind: str, token: Token) -> None:
        with self.lock:
            self.received.append(token)
            if token.is_newer_than(self.token):
                self.token = token

    def token_source(self, kind: str) -> Token | None:
        with self.lock:
            self.handed_out.append(self.token)
            return self.token
