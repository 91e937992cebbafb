"""``kube-event-agent health``: ask the running agent's /health and print PASS or FAIL.

Output and exit codes follow the Datadog Agent's ``agent health``; meant for exec probes and
humans, so it imports nothing but the standard library and reads no config file: the port
comes from ``--port``, else ``DD_HEALTH_PORT``, else 5555.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
from typing import Any, TextIO

__all__ = ["DEFAULT_PORT", "add_health_arguments", "main", "main_health", "render"]

DEFAULT_PORT = 5555


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=None,
                        help=f"health port (default: $DD_HEALTH_PORT, else {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1", help="agent address (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for an answer (default: %(default)s)")


def main_health(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the agent's health; 0 on PASS, 1 on FAIL or when the agent cannot be asked."""
    out = out or sys.stdout
    try:
        port = _port(args.port)
        document = _fetch(args.host, port, args.timeout)
    except _Unreachable as exc:
        print("Agent health: FAIL", file=out)
        print(exc, file=out)
        return 1
    text, passed = render(document)
    out.write(text)
    return 0 if passed else 1


def render(document: dict[str, Any]) -> tuple[str, bool]:
    """The report for a /health body, and whether it passes (nothing Unhealthy)."""
    healthy = sorted(str(name) for name in document.get("Healthy") or [])
    unhealthy = sorted(str(name) for name in document.get("Unhealthy") or [])
    lines = [f"Agent health: {'FAIL' if unhealthy else 'PASS'}"]
    if healthy:
        lines += [f"=== {len(healthy)} healthy components ===", ", ".join(healthy)]
    if unhealthy:
        lines += [f"=== {len(unhealthy)} unhealthy components ===", ", ".join(unhealthy)]
        problems = document.get("problems") or {}
        lines += [f"  {name}: {problems[name]}" for name in unhealthy if problems.get(name)]
    return "\n".join(lines) + "\n", not unhealthy


class _Unreachable(Exception):
    """No usable answer; the message is the one-line reason printed."""


def _port(flag: int | None) -> int:
    raw = flag if flag is not None else os.environ.get("DD_HEALTH_PORT", "").strip()
    if raw in (None, ""):
        return DEFAULT_PORT
    try:
        port = int(raw)
    except ValueError:
        raise _Unreachable(f"DD_HEALTH_PORT={str(raw)[:20]!r} is not a port number") from None
    if port == 0:
        raise _Unreachable("the health server is disabled (health_port: 0)")
    if not 0 < port < 65536:
        raise _Unreachable(f"health port {port} is out of range 1-65535")
    return port


def _fetch(host: str, port: int, timeout: float) -> dict[str, Any]:
    # http.client, not urllib: urllib would send a loopback request through $HTTP_PROXY.
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/health"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/health", headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise _Unreachable(f"could not reach the agent at {url}: {exc or type(exc).__name__}"
                           ) from None
    finally:
        connection.close()
    document = _document(body)
    if document is None:
        # 500 with the component lists is the normal answer while something is Unhealthy;
        # without them it is an error (e.g. the supervisor's status timed out).
        raise _Unreachable(f"agent at {url} answered {response.status}: {_error(body)}")
    return document


def _document(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or "Healthy" not in value or "Unhealthy" not in value:
        return None
    return value


def _error(body: bytes) -> str:
    try:
        value = json.loads(body)
    except ValueError:
        return "unexpected answer"
    if isinstance(value, dict) and value.get("error"):
        return str(value["error"])[:200]
    return "unexpected answer"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube-event-agent health",
                                     description="Print the running agent's health.")
    add_health_arguments(parser)
    return main_health(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
