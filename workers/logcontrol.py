"""Log level, format and secret masking of the current process (supervisor or worker).

loguru runs filters, patchers and format functions in the process that *emits* a record, so
every process keeps its own current level, output format and secrets here: the supervisor
changes its copy at once on reload and tells each worker with ``Reload``, and the worker
changes its copy (``configure``).

Worker lines reach the supervisor through one one-way pipe per worker (``PipeSink``), and the
supervisor alone writes stderr. Not through a loguru ``enqueue=True`` handler handed to the
workers: its queue has one lock shared by every process, and a worker SIGKILLed or SIGSTOPped
while holding it (easy when stderr is slow) blocks the logging of every other process for
good, the supervisor's elector included.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

import orjson
from loguru import logger

from workers.settings import WorkerSettings

__all__ = [
    "PipeSink",
    "configure",
    "install",
    "level_number",
    "mask",
    "secrets_of",
]

_LEVELS = {
    "trace": 5,
    "debug": 10,
    "info": 20,
    "success": 25,
    "warn": 30,
    "warning": 30,
    "error": 40,
    "critical": 50,
    "off": 1000,
}
_TEXT_FORMAT = (
    "{time:YYYY-MM-DDTHH:mm:ss.SSS!UTC}Z {level: <8} {process.name}[{process.id}] "
    "{name}: {message}{extra[_exc]}\n"
)
_JSON_FORMAT = "{extra[_json]}\n"
_MASK = "********"
_MIN_SECRET_LEN = 4
"""Shorter strings are not masked: masking "ab" everywhere would garble every line."""


@dataclass(slots=True)
class _State:
    level_no: int = 20
    json: bool = False
    secrets: tuple[str, ...] = ()


_state = _State()


def level_number(level: str) -> int:
    """loguru severity for a Datadog/loguru level name (``warn``, ``OFF``, ... accepted)."""
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        known = ", ".join(_LEVELS)
        raise ValueError(f"log_level: unknown level {level!r} (expected one of {known})") from None


def configure(
    *,
    level: str | None = None,
    json: bool | None = None,
    secrets: Iterable[str] | None = None,
) -> None:
    """Change this process's level, format or secrets; effective for the next record."""
    if level is not None:
        _state.level_no = level_number(level)
    if json is not None:
        _state.json = json
    if secrets is not None:
        found = {s for s in secrets if len(s) >= _MIN_SECRET_LEN}
        # Longest first, so a secret containing another is masked whole.
        _state.secrets = tuple(sorted(found, key=len, reverse=True))


def secrets_of(settings: WorkerSettings) -> tuple[str, ...]:
    """Strings of ``settings`` that must never appear in a log line."""
    found = [settings.intake.api_key]
    for url in (settings.intake.proxy_http, settings.intake.proxy_https):
        if url:
            parts = urlsplit(url)
            found += [parts.password or "", f"{parts.username}:{parts.password}"]
    return tuple(s for s in found if s and s != "None:None")


def mask(text: str) -> str:
    """``text`` with this process's secrets replaced by asterisks."""
    for secret in _state.secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def _gate(record: dict[str, Any]) -> bool:
    if record["extra"].get("_forwarded"):
        return True  # a worker's line, already filtered by the worker's own level
    return record["level"].no >= _state.level_no


def _patch(record: dict[str, Any]) -> None:
    record["message"] = mask(record["message"])
    exc = record["exception"]
    text = ""
    if exc is not None and exc.type is not None:
        text = mask("".join(traceback.format_exception(exc.type, exc.value, exc.traceback)))
    record["extra"]["_exc"] = "\n" + text.rstrip("\n") if text else ""


def _render(record: dict[str, Any]) -> str:
    if not _state.json:
        return _TEXT_FORMAT
    extra = {k: v for k, v in record["extra"].items() if not k.startswith("_")}
    doc: dict[str, Any] = {
        "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "process": record["process"].name,
        "pid": record["process"].id,
        "logger": record["name"],
        "message": record["message"],
    }
    if extra:
        doc["extra"] = extra
    if record["extra"].get("_exc"):
        doc["exception"] = record["extra"]["_exc"].lstrip("\n")
    record["extra"]["_json"] = orjson.dumps(doc, default=str).decode()
    return _JSON_FORMAT


def install(
    sink: Any, *, level: str, json: bool, secrets: Iterable[str] = (), enqueue: bool = False
) -> int:
    """Make ``sink`` the only handler of this process's global loguru logger.

    Level and format are decided per record from this module's state, so ``configure``
    changes them without touching the handler. Returns the handler id.
    """
    configure(level=level, json=json, secrets=secrets)
    logger.remove()
    logger.configure(patcher=_patch, extra={"_exc": ""})
    return logger.add(
        sink,
        level=0,
        filter=_gate,
        format=_render,
        colorize=False,
        backtrace=False,
        diagnose=False,  # diagnose prints local variables: the API key among them
        enqueue=enqueue,
        catch=True,
    )


class PipeSink:
    """loguru sink of a worker: each formatted record goes whole to the supervisor."""

    __slots__ = ("_conn", "_pid")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._pid = os.getpid()

    def __call__(self, message: str) -> None:
        if os.getpid() != self._pid:
            return  # a fork of the worker must not write into its parent's pipe
        # Supervisor gone: the worker exits on the EOF of its command pipe.
        with contextlib.suppress(OSError, ValueError):
            self._conn.send_bytes(str(message).encode("utf-8", "replace"))
