"""``kubesim serve``: run the emulator until SIGTERM/SIGINT; prints ``READY <url>``."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from loguru import logger

from kubesim.cluster import ServerConfig
from kubesim.kubeconfig import write_kubeconfig
from kubesim.server import ApiServer
from kubesim.tls import make_tls

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubesim",
                                     description="A local Kubernetes API server emulator.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the Kubernetes API on 127.0.0.1")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    serve.add_argument("--kubeconfig", help="write an admin kubeconfig here")
    serve.add_argument("--admin-token", help="the admin bearer token (default: random)")
    serve.add_argument("--history", type=_positive_int, default=10_000,
                       help="changes retained per resource for watches (default 10000)")
    serve.add_argument("--event-ttl", type=float, default=3600.0,
                       help="seconds an Event lives after its last write (default 3600)")
    serve.add_argument("--bookmark-interval", type=float, default=60.0,
                       help="seconds between watch BOOKMARKs (default 60)")
    serve.add_argument("--tls", action="store_true",
                       help="serve HTTPS with a throwaway CA (kubectl sends tokens only over TLS)")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="kubesim-"))
    ssl_context, ca_pem = None, ""
    if args.tls:
        files = make_tls(workdir, args.host)
        ssl_context, ca_pem = files.context, files.ca_pem
    token = args.admin_token or secrets.token_urlsafe(24)
    config = ServerConfig(host=args.host, port=args.port, admin_token=token,
                          history=args.history, event_ttl=args.event_ttl, tls=args.tls,
                          bookmark_interval=args.bookmark_interval)
    server = ApiServer(config, ssl_context, ca_pem)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        path = write_kubeconfig(args.kubeconfig or workdir / "kubeconfig", server.url, token,
                                ca_pem)
        logger.info("kubesim: kubeconfig {} (features: {})", path, server.cluster.features)
        print(f"READY {server.url}", flush=True)
        await stop.wait()
        logger.info("kubesim: stopping")
    finally:
        await server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss} {level} {message}")
    try:
        return asyncio.run(_serve(args))
    except OSError as exc:
        print(f"kubesim: cannot serve: {exc}", file=sys.stderr)
        return 1
