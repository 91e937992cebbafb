"""The ``kube-event-agent`` command line (``python -m supervisor`` is the same).

One ``_add_<name>`` function registers each subcommand and one ``cmd_<name>`` runs it;
adding a subcommand is one entry in ``SUBCOMMANDS``. This module stays cheap to import:
``health`` runs as an exec probe every few seconds, so pydantic, yaml and kubernetes are
imported inside the subcommands that need them, never here.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["EXIT_INVALID", "EXIT_OK", "build_parser", "cmd_config", "cmd_demo", "cmd_health",
           "cmd_run", "main"]

PROG = "kube-event-agent"
EXIT_OK = 0
EXIT_INVALID = 2
"""Bad usage or invalid configuration (argparse's code for usage errors, too)."""

_IMPORTED_AT = time.time()
"""About when the command started: the demo times itself from here, not from the process's
creation, which may be a shell's that ran other commands before exec'ing this one."""
DEMO_STARTED_ENV = "KUBE_EVENT_AGENT_DEMO_STARTED"
"""Read by ``demo.scenario.STARTED_ENV``: spelled in both, as neither package may import
the other (import-linter contracts); tests/test_demo.py holds them equal."""

_DEFAULT_CONFIG_PATH = "/etc/datadog-agent/datadog.yaml"
"""Same as ``supervisor.config.DEFAULT_CONFIG_PATH`` (not imported: see the docstring)."""


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config PATH``, shared by every subcommand that reads datadog.yaml."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=f"datadog.yaml to read; a missing file is fine (default: {_DEFAULT_CONFIG_PATH})",
    )


def _add_config(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "config",
        help="print the resolved configuration (secrets scrubbed) and where each value came from",
        description=(
            "Read datadog.yaml and DD_* environment variables, validate them, and print every "
            "key as YAML with its value (secrets scrubbed) and its source: default, file, env "
            "or derived. Warnings go to stderr. Exit 2 with a one-line error if invalid."
        ),
    )
    _add_config_option(parser)
    parser.set_defaults(handler=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    """``kube-event-agent config``."""
    from supervisor.config import ConfigError, load_config, resolved

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    found = "" if loaded.file_found else " (not found: defaults and environment only)"
    sys.stdout.write(
        "# kube-event-agent configuration: every key's value (secrets scrubbed) and its\n"
        "# source: default | file | env (DD_<KEY>) | derived (from the machine or other keys)\n"
        f"# file: {loaded.path}{found}\n"
    )
    sys.stdout.write(_config_yaml(resolved(loaded)))
    return EXIT_OK


def _config_yaml(data: dict[str, Any]) -> str:
    """One line per key, ``key: {value: ..., source: ...}``; proxy's three keys nested."""
    import yaml

    def flow(entry: dict[str, Any]) -> str:
        text = yaml.safe_dump(
            entry, default_flow_style=True, sort_keys=False, allow_unicode=True, width=1 << 20
        )
        return text.strip()

    lines = []
    for key, entry in data.items():
        if "source" in entry:
            lines.append(f"{key}: {flow(entry)}")
        else:
            lines.append(f"{key}:")
            lines.extend(f"  {sub}: {flow(sub_entry)}" for sub, sub_entry in entry.items())
    return "\n".join(lines) + "\n"


def _add_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the agent (the container entrypoint): elect a leader, run its workers",
        description=(
            "Run the supervisor: campaign for the leader lock and, while leading, run the "
            "event and control-plane workers. SIGTERM hands leadership over; SIGHUP reloads "
            "datadog.yaml. Exit 2 before any API call if the configuration is invalid."
        ),
    )
    _add_config_option(parser)
    parser.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """``kube-event-agent run``."""
    from supervisor.agent import run

    return run(args.config)


def _add_health(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from supervisor.probe import add_health_arguments

    parser = subparsers.add_parser(
        "health",
        help="ask the running agent: prints 'Agent health: PASS' (exit 0) or FAIL (exit 1)",
    )
    add_health_arguments(parser)
    parser.set_defaults(handler=cmd_health)


def cmd_health(args: argparse.Namespace) -> int:
    """``kube-event-agent health``: an exec probe, stdlib only."""
    from supervisor.probe import main_health

    return main_health(args)


def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # The demo owns its options (``python -m demo --help``): with "+" as the only prefix
    # character this parser passes every argument through untouched, --help included.
    parser = subparsers.add_parser(
        "demo",
        help="the no-cluster demo: kubesim, agent replicas, events, a leader hand-over "
             "([--duration S] [--replicas N] [--keep] [--crash]; 'demo --help' for all)",
        add_help=False,
        prefix_chars="+",
    )
    parser.add_argument("demo_args", nargs="*", help=argparse.SUPPRESS)
    parser.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """``kube-event-agent demo``: becomes ``python -m demo``, which may import kubesim
    (this package must not, see the import-linter contracts)."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[DEMO_STARTED_ENV] = repr(_IMPORTED_AT)
    try:
        os.execv(sys.executable, [sys.executable, "-m", "demo", *args.demo_args])
    except OSError as exc:
        print(f"{PROG} demo: cannot run {sys.executable}: {exc.strerror or exc}",
              file=sys.stderr)
    return EXIT_INVALID


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_run,
    _add_config,
    _add_health,
    _add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Leader-elected Kubernetes event and control-plane collector for Datadog. "
            "Reads datadog.yaml and DD_* environment variables like the Datadog Agent."
        ),
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, title="commands"
    )
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_INVALID
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
