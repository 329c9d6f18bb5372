"""``mechakit run``: the options of the Dapr sidecar, and a clear message when the packages
it needs (the ``sidecar`` extra) are not installed. The sidecar itself is in :mod:`._serve`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from ._common import extra_hint, lacks_extra
from .dapr_flags import (
    LOG_LEVELS,
    add_dapr_run_flags,
    apply_app_ssl,
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
    "the app's command (after the flags, with or without '--') with DAPR_HTTP_PORT, DAPR_GRPC_PORT, APP_ID and the other "
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
    parser.add_argument(
        "app_command",
        nargs="*",
        metavar="COMMAND",
        help="the app to run, with its arguments: everything from the first word that is "
        "not a flag or a flag's value (as with dapr run), or everything after '--'",
    )
    parser.set_defaults(handler=_run, accepts_passthrough=True)
    _take_app_command(parser)


def _take_app_command(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` leave the app's command alone, as the Dapr CLI does
    (``dapr run --app-id x python app.py -v``): argparse would read the app's own flags as
    mechakit's, so the words from the command on are cut off before parsing (see
    :func:`split_app_command`) and stored as ``app_command``."""
    parse = parser.parse_known_args

    def parse_known_args(
        args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        flags, command = split_app_command(parser, list(sys.argv[1:] if args is None else args))
        parsed, extras = parse(flags, namespace)
        parsed.app_command = command
        return parsed, extras

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign, assignment]


def split_app_command(
    parser: argparse.ArgumentParser, args: Sequence[str]
) -> tuple[list[str], list[str]]:
    """``args`` as (mechakit's flags, the app's command): the command starts at the first word
    that is neither a flag nor the value of one. A boolean flag takes the next word only when
    it is a boolean (``--enable-metrics false``); ``--flag=value`` and ``-p3000`` take none.
    A ``--`` ends the flags too (and is not part of the command)."""
    options = parser._option_string_actions
    position = 0
    while position < len(args):
        word = args[position]
        if word == "--" or not word.startswith("-") or word == "-":
            break
        position += 1
        name, equals, _ = word.partition("=")
        action = options.get(name) or _abbreviated(options, name)
        if action is None or equals or action.nargs == 0:
            continue  # -p3000 (the value attached), --flag=value, or unknown (argparse says so)
        if action.nargs == "?":
            if position < len(args) and _is_bool(args[position]):
                position += 1
            continue
        position += 1  # one value
    after = position + 1 if position < len(args) and args[position] == "--" else position
    return list(args[:position]), list(args[after:])


def _abbreviated(options: dict[str, argparse.Action], name: str) -> argparse.Action | None:
    """The action ``name`` abbreviates (``--app-i``), as argparse allows; None if not one."""
    if not name.startswith("--"):
        return None
    found = {id(action): action for option, action in options.items() if option.startswith(name)}
    return next(iter(found.values())) if len(found) == 1 else None


def _is_bool(word: str) -> bool:
    from mechakit.core.metadata import parse_bool  # here: the other commands need no pydantic

    try:
        parse_bool(word)
    except ValueError:
        return False
    return True


def _run(namespace: argparse.Namespace, passthrough: list[str]) -> int:
    # Imported here: the other commands (``mechakit components list``) do not need them.
    from ._serve import serve
    from .multi_app_run import run_template, take_log_fd

    take_log_fd()
    if lacks_extra("run", "sidecar", SIDECAR):
        return 1
    if namespace.run_file:
        return run_template(namespace.run_file, ("--log-as-json",) if namespace.log_as_json else ())
    before: list[str] = namespace.app_command
    command = [*before, "--", *passthrough] if before and passthrough else before or passthrough
    _configure_logging(namespace)
    log = logging.getLogger("mechakit.run")
    for line in notices(namespace):
        log.warning("%s", line)
    apply_app_ssl(namespace)
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
