"""``mechakit run``: the options of the Dapr sidecar, and a clear message when the packages
it needs (the ``sidecar`` extra) are not installed. The sidecar itself is in :mod:`._serve`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from ._common import extra_hint, lacks_extra
from ._serve import serve
from .dapr_flags import (
    LOG_LEVELS,
    add_dapr_run_flags,
    count,
    generate_app_id,
    non_negative,
    notices,
)

SIDECAR = ("starlette", "uvicorn", "grpc", "dapr", "httpx")
"""Top-level modules of what the ``sidecar`` extra installs (``google.protobuf`` and
``google.rpc`` come with dapr and grpcio)."""


NAME = "run"
HELP = "serve the Dapr HTTP API over the components of a folder, and run the app"
DESCRIPTION = (
    "A drop-in for 'dapr run': start the components, serve the Dapr HTTP API v1.0 on "
    "--dapr-listen-addresses:--dapr-http-port and the gRPC API on --dapr-grpc-port, and run "
    "the command after '--' with DAPR_HTTP_PORT, DAPR_GRPC_PORT, APP_ID and the other "
    "variables dapr run sets. Every flag of dapr run is accepted; those with no meaning here "
    "are named in one notice line at start-up. SIGINT and SIGTERM are passed on to the app; "
    "when it exits, mechakit stops and exits with its code, and when mechakit is killed the "
    "app is killed too. Without a command it serves until stopped. Set DAPR_API_TOKEN to "
    "require the dapr-api-token header."
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_dapr_run_flags(parser)
    own = parser.add_argument_group("mechakit flags")
    own.add_argument(
        "--http-read-header-timeout",
        type=non_negative,
        default=10.0,
        metavar="SECONDS",
        help="close an HTTP connection whose request headers are not complete by then "
        "(default 10, as daprd; 0: no limit)",
    )
    own.add_argument(
        "--http-read-body-timeout",
        type=non_negative,
        default=60.0,
        metavar="SECONDS",
        help="answer 408 when a request body is not complete this long after its headers "
        "(default 60; 0: no limit)",
    )
    own.add_argument(
        "--max-bulk-keys",
        type=count,
        default=10_000,
        metavar="N",
        help="most keys, items, operations or entries in one bulk state, transaction or "
        "bulk publish request, over HTTP and gRPC; more get 400 / INVALID_ARGUMENT "
        "(default 10000; 0: no limit)",
    )
    parser.set_defaults(handler=_run, accepts_passthrough=True)


def _run(namespace: argparse.Namespace, command: list[str]) -> int:
    if lacks_extra("run", "sidecar", SIDECAR):
        return 1
    _configure_logging(namespace)
    log = logging.getLogger("mechakit.run")
    if namespace.run_file:
        print(
            "error: --run-file (multi-app run) is not supported by mechakit yet: start one "
            "'mechakit run' per app",
            file=sys.stderr,
        )
        return 1
    for line in notices(namespace):
        log.warning("%s", line)
    if not namespace.app_id:
        namespace.app_id = generate_app_id()
        log.info("no --app-id given: the app id is %r", namespace.app_id)
    try:
        return asyncio.run(serve(namespace, command))
    except ModuleNotFoundError as exc:  # installed but incomplete, e.g. no google.rpc
        if (exc.name or "").partition(".")[0] not in (*SIDECAR, "google"):
            raise
        print(extra_hint("run", "sidecar", [exc.name or "?"]), file=sys.stderr)
        return 1


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, with daprd's field names (``--log-as-json``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower().replace("warning", "warn"),
            "scope": record.name,
            "msg": record.getMessage(),
            "type": "log",
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _configure_logging(namespace: argparse.Namespace) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if namespace.log_as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=LOG_LEVELS[namespace.log_level], handlers=[handler])
