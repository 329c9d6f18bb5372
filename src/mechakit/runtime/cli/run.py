"""``mechakit run``: the options of the Dapr sidecar, and a clear message when the packages
it needs (the ``sidecar`` extra) are not installed. The sidecar itself is in :mod:`._serve`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from ._common import extra_hint, missing_modules
from ._serve import DEFAULT_GRPC_PORT, serve

SIDECAR = ("starlette", "uvicorn", "grpc", "dapr", "httpx")
"""Top-level modules of what the ``sidecar`` extra installs (``google.protobuf`` and
``google.rpc`` come with dapr and grpcio)."""


LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {port}")
    return port


NAME = "run"
HELP = "serve the Dapr HTTP API over the components of a folder, and run the app"
DESCRIPTION = (
    "Start the components, serve the Dapr HTTP API v1.0 on "
    "--api-listen-address:--dapr-http-port, and run the command after '--' with "
    "DAPR_HTTP_PORT, DAPR_GRPC_PORT and APP_ID set. SIGINT and SIGTERM are passed on to "
    "the app; when it exits, mechakit stops and exits with its code, and when mechakit is "
    "killed the app is killed too. Without a command "
    "it serves until stopped. Set DAPR_API_TOKEN to require the dapr-api-token header."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app-id", required=True, help="the app id (key prefix, event source)")
    parser.add_argument(
        "--resources-path",
        "--components-path",
        dest="resources_paths",
        action="append",
        metavar="DIR",
        help="a folder (or file) of Component, Subscription and Configuration YAML; "
        "repeatable (default: $MECHAKIT_HOME/components, ~/.mechakit/components, else "
        "built-in SQLite state, in-memory pub/sub and locks)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="a file with the Configuration (secret scopes) to apply"
    )
    parser.add_argument("--dapr-http-port", type=_port, default=3500, metavar="PORT")
    parser.add_argument(
        "--dapr-grpc-port",
        type=_port,
        default=None,
        metavar="PORT",
        help=f"where the Dapr gRPC API listens, given to the app as DAPR_GRPC_PORT (default "
        f"{DEFAULT_GRPC_PORT}, skipped with a warning when taken; 0: a free port)",
    )
    parser.add_argument(
        "--app-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="where the app listens: its subscriptions and input-binding events are delivered "
        "there once it answers",
    )
    parser.add_argument(
        "--app-protocol",
        choices=("http", "grpc"),
        default="http",
        help="how the app is called: HTTP (GET /dapr/subscribe, POST <route>) or gRPC "
        "(AppCallback)",
    )
    parser.add_argument("--log-level", choices=tuple(LOG_LEVELS), default="info")
    parser.add_argument(
        "--api-listen-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="where the HTTP API listens (default 127.0.0.1; 0.0.0.0 exposes it)",
    )
    parser.add_argument(
        "--dapr-http-max-request-size",
        type=int,
        default=4,
        metavar="MB",
        help="larger request bodies get 413 (default 4)",
    )
    parser.add_argument(
        "--http-read-header-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="close an HTTP connection whose request headers are not complete by then "
        "(default 10, as daprd; 0: no limit)",
    )
    parser.add_argument(
        "--http-read-body-timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="answer 408 when a request body is not complete this long after its headers "
        "(default 60; 0: no limit)",
    )
    parser.add_argument(
        "--max-bulk-keys",
        type=_count,
        default=10_000,
        metavar="N",
        help="most keys, items, operations or entries in one bulk state, transaction or "
        "bulk publish request, over HTTP and gRPC; more get 400 / INVALID_ARGUMENT "
        "(default 10000; 0: no limit)",
    )
    parser.set_defaults(handler=_run, accepts_passthrough=True)


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {count}")
    return count


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {text}")
    return seconds


def _run(namespace: argparse.Namespace, command: list[str]) -> int:
    missing = missing_modules(SIDECAR)
    if missing:
        print(extra_hint("run", "sidecar", missing), file=sys.stderr)
        return 1
    logging.basicConfig(
        level=LOG_LEVELS[namespace.log_level],
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if namespace.dapr_http_max_request_size <= 0:
        print("error: --dapr-http-max-request-size must be > 0", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(namespace, command))
    except ModuleNotFoundError as exc:  # installed but incomplete, e.g. no google.rpc
        if (exc.name or "").partition(".")[0] not in (*SIDECAR, "google"):
            raise
        print(extra_hint("run", "sidecar", [exc.name or "?"]), file=sys.stderr)
        return 1
