"""``mechakit conformance``: the conformance suite of a component's type, run by pytest."""

from __future__ import annotations

import argparse

from ._common import lacks_extra

NEEDS = ("pytest", "pytest_asyncio")
"""What the ``conformance`` extra installs for running the suite."""


NAME = "conformance"
HELP = "run the conformance suite against the component in a YAML file"
DESCRIPTION = (
    "Run every conformance test of the component's type against the first "
    "Component in FILE ({tmp} in metadata values becomes a fresh folder per test). "
    "Arguments after '--' go to pytest, e.g. 'mechakit conformance c.yaml -- -x -v'. "
    "The exit code is pytest's."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a Dapr Component YAML file")
    parser.add_argument(
        "--only",
        metavar="WORDS",
        help="comma-separated words: run only tests whose names contain one of them "
        "(e.g. etag,ttl)",
    )
    parser.add_argument(
        "--features",
        metavar="LIST",
        default=None,
        help="comma-separated features the driver must declare, e.g. ETAG,TTL ('' or 'none' "
        "for none); overrides the file's conformance.mechakit.io/features annotation",
    )
    parser.set_defaults(handler=_conformance, accepts_passthrough=True)


def _conformance(namespace: argparse.Namespace, passthrough: list[str]) -> int:
    if lacks_extra("conformance", "conformance", NEEDS):
        return 1
    from mechakit.conformance.runner import run_conformance

    return run_conformance(
        namespace.file,
        only=namespace.only or (),
        features=namespace.features,
        pytest_args=passthrough,
    )
