"""``mechakit conformance``: the conformance suite of a component's type, run by pytest."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from ._common import extra_hint, missing_modules

SUITES = {
    "state": "TestState",
    "pubsub": "TestPubSub",
    "bindings": "TestBindings",
    "secretstores": "TestSecretStore",
    "lock": "TestLock",
    "configuration": "TestConfiguration",
}
"""Component category → its test class in ``mechakit/conformance/all_suites.py``."""

NEEDS = ("pytest", "pytest_asyncio", "httpx")
"""What the ``conformance`` extra installs: pytest runs the suite, and its plug-in
(``mechakit.conformance.plugin``) imports the Vault provisioner, which imports httpx."""


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "conformance",
        help="run the conformance suite against the component in a YAML file",
        description="Run every conformance test of the component's type against the first "
        "Component in FILE ({tmp} in metadata values becomes a fresh folder per test). "
        "Arguments after '--' go to pytest, e.g. 'mechakit conformance c.yaml -- -x -v'. "
        "The exit code is pytest's.",
    )
    parser.add_argument("file", metavar="FILE", help="a Dapr Component YAML file")
    parser.add_argument(
        "--only",
        metavar="WORDS",
        help="comma-separated words: run only tests whose names contain one of them "
        "(e.g. etag,ttl)",
    )
    parser.set_defaults(handler=_conformance, accepts_passthrough=True)


def _conformance(namespace: argparse.Namespace, passthrough: list[str]) -> int:
    missing = missing_modules(NEEDS)
    if missing:
        print(extra_hint("conformance", "conformance", missing), file=sys.stderr)
        return 1
    from mechakit.core.errors import ManifestError
    from mechakit.runtime.manifest import load_manifests

    file = Path(namespace.file).resolve()
    try:
        components = load_manifests(file).components
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not components:
        print(f"error: {namespace.file}: no 'kind: Component' document found", file=sys.stderr)
        return 1
    category = components[0].category
    if category not in SUITES:
        print(
            f"error: {components[0].label}: no conformance suite for category {category!r} "
            f"(suites: {', '.join(SUITES)})",
            file=sys.stderr,
        )
        return 1
    package = find_spec("mechakit.conformance")  # the folder, without importing pytest here
    suites = Path(package.origin if package and package.origin else "").parent
    command = [
        sys.executable,
        "-m",
        "pytest",
        f"{suites / 'all_suites.py'}::{SUITES[category]}",
        "-p",
        "mechakit.conformance.plugin",
        "--mechakit-component",
        str(file),
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-p",
        "no:cacheprovider",
        "-rs",
    ]
    if namespace.only:
        words = [w.strip() for w in namespace.only.split(",") if w.strip()]
        command += ["-k", " or ".join(words)]
    command += passthrough
    return subprocess.call(command)
