"""``python -m demo`` / ``kube-event-agent demo``: options, then the whole story."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

MAX_REPLICAS = 9


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 5 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 5 and 3600 seconds, got {text}")
    return value


def _replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 2 <= value <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(
            f"must be between 2 (a hand-over needs a follower) and {MAX_REPLICAS}, got {value}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.5 <= value <= 500:
        raise argparse.ArgumentTypeError(f"must be between 0.5 and 500 events/s, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from demo.bootstrap import MANIFESTS_ENV

    parser = argparse.ArgumentParser(
        prog="kube-event-agent demo",
        description=(
            "The whole story on this machine, no cluster and no API key: a local Kubernetes "
            "API server (kubesim) with the project's RBAC and ConfigMap manifests applied, "
            "agent replicas as real processes authenticated as the datadog-agent "
            "ServiceAccount, a stream of realistic events (with repeats of rising count), a "
            "local Datadog intake, and partway the leader is stopped to show the take-over. "
            "Ends with what was generated, delivered, duplicated and lost."
        ),
        epilog=("Exit status: 0 nothing lost (and, without --crash, nothing duplicated); "
                "1 otherwise, with the reason; 2 bad options or missing manifests; "
                "130 interrupted. Ctrl-C stops everything at any time."),
    )
    parser.add_argument("--duration", type=_duration, default=40.0, metavar="S",
                        help="seconds of event stream; set-up and summary add ~10 s "
                             "(default: 40)")
    parser.add_argument("--replicas", type=_replicas, default=3, metavar="N",
                        help="agent replicas to run (default: 3)")
    parser.add_argument("--keep", action="store_true",
                        help="after the summary, leave everything running until Ctrl-C")
    parser.add_argument("--crash", action="store_true",
                        help="SIGKILL the leader instead of SIGTERM: the take-over waits for "
                             "the lease to expire, and the batch sent after the last "
                             "checkpoint may be delivered twice (never lost)")
    parser.add_argument("--rate", type=_rate, default=20.0, metavar="R",
                        help="events generated per second (default: 20)")
    parser.add_argument("--manifests", type=Path, default=None, metavar="DIR",
                        help=f"directory holding rbac/ and datadog_configmap.yaml (default: "
                             f"${MANIFESTS_ENV}, else the repository's manifests/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from demo.control import EXIT_USAGE

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        from demo.bootstrap import ManifestError, default_manifests_dir
        from demo.control import Options
        from demo.scenario import run_demo
    except ModuleNotFoundError as exc:  # an agent-only install (the container image)
        print(f"kube-event-agent demo: error: module {exc.name!r} is missing: the demo needs "
              "the 'sim' extra (pip install 'kube-event-agent[sim]')", file=sys.stderr)
        return EXIT_USAGE

    options = Options(
        manifests=args.manifests or default_manifests_dir(),
        duration_s=args.duration, replicas=args.replicas, keep=args.keep, crash=args.crash,
        rate=args.rate,
    )
    try:
        return run_demo(options)
    except ManifestError as exc:
        print(f"kube-event-agent demo: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
