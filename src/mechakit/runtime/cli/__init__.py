"""The ``mechakit`` command: validate manifests, list and document components, run conformance,
serve the Dapr HTTP API for an app (``run``) and write default components (``init``).

One module per command (:mod:`.validate`, :mod:`.components`, :mod:`.conformance`,
:mod:`.run`, :mod:`.init`), each with its ``NAME``, ``HELP`` and ``DESCRIPTION`` and a
``configure`` function that adds its arguments and handler to the parser
:func:`build_parser` makes for it. Each command imports what it needs when it runs, so ``mechakit
components list`` imports no backend SDK, and only ``mechakit run`` needs the packages of the
``sidecar`` extra (grpcio, uvicorn, starlette, httpx, dapr): without them it says what to
install instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from mechakit.core.errors import MechakitError

from . import components, conformance, init, run, validate

Handler = Callable[[argparse.Namespace, list[str]], int]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, passthrough = args[:split], args[split + 1 :]
    parser = build_parser()
    namespace = parser.parse_args(args)
    if passthrough and not getattr(namespace, "accepts_passthrough", False):
        parser.error("arguments after '--' are only accepted by 'mechakit conformance' and 'run'")
    handler: Handler = namespace.handler
    try:
        return handler(namespace, passthrough)
    except BrokenPipeError:
        return 0
    except MechakitError as exc:  # e.g. two plug-ins registering one type: a line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechakit",
        description="Dapr-compatible components for Python: check manifests, inspect drivers, "
        "run the conformance suite, serve the Dapr HTTP API for an app.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in (validate, components, conformance, run, init):
        command.configure(
            commands.add_parser(command.NAME, help=command.HELP, description=command.DESCRIPTION)
        )
    return parser


__all__ = ["build_parser", "main"]
