"""``mechakit conformance FILE``: the suite of FILE's component type, run by pytest in a child.

The command line calls :func:`run_conformance`; :func:`conformance_command` is the pytest
command it runs, for tools that want to run it themselves.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mechakit.core.building_blocks import BUILDING_BLOCKS
from mechakit.core.errors import ConfigurationError

from .component_file import target_from_component_file

TEST_CLASSES = {category: block.suite for category, block in BUILDING_BLOCKS.items()}
"""Component category → its test class in ``mechakit/conformance/all_suites.py``."""


def conformance_command(
    file: Path,
    category: str,
    *,
    only: str | Sequence[str] = (),
    features: str | Sequence[str] | None = None,
    pytest_args: Sequence[str] = (),
) -> list[str]:
    """The pytest command running the ``category`` suite against the component in ``file``.

    ``only``: words, one of which a test name must contain (a comma-separated string or a
    list). ``features``: the features the driver must declare (a comma-separated string or
    a list, empty for none), overriding the file's ``conformance.mechakit.io/features``.
    """
    suites = Path(__file__).resolve().parent / "all_suites.py"
    command = [
        sys.executable,
        "-m",
        "pytest",
        f"{suites}::{TEST_CLASSES[category]}",
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
        "-rfEs",
    ]
    if features is not None:
        stated = features if isinstance(features, str) else ",".join(features)
        command += ["--mechakit-features", stated or "none"]
    words = only.split(",") if isinstance(only, str) else list(only)
    words = [w.strip() for w in words if w.strip()]
    if words:
        command += ["-k", " or ".join(words)]
    return [*command, *pytest_args]


def run_conformance(
    file: str | Path,
    *,
    only: str | Sequence[str] = (),
    features: str | Sequence[str] | None = None,
    pytest_args: Sequence[str] = (),
) -> int:
    """Check ``file`` (component, category, stated features), run the suite, return pytest's
    exit code; 1 with the reason on stderr when the file cannot be run."""
    path = Path(file).resolve()
    try:
        target = target_from_component_file(path, features)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if target.category not in TEST_CLASSES:
        print(
            f"error: {file}: no conformance suite for {target.type!r} "
            f"(suites: {', '.join(TEST_CLASSES)})",
            file=sys.stderr,
        )
        return 1
    command = conformance_command(
        path, target.category, only=only, features=features, pytest_args=pytest_args
    )
    return subprocess.call(command)
