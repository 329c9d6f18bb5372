"""Helpers shared by the ``mechakit`` commands: tables, driver classes, missing extras."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechakit.core.registry import ComponentSpec

DISTRIBUTIONS = {"grpc": "grpcio", "pytest_asyncio": "pytest-asyncio"}
"""Top-level module → the distribution that installs it, where their names differ."""


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; the last column is never padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def driver_class(spec: ComponentSpec) -> Any:
    """The driver class, imported without checking its SDK (drivers import it lazily)."""
    module_name, _, attr = spec.target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The distributions of those top-level modules that cannot be imported (none imported)."""
    missing = []
    for module in modules:
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(DISTRIBUTIONS.get(module, module))
    return missing


def lacks_extra(command: str, extra: str, modules: Sequence[str]) -> bool:
    """Whether any of ``modules`` is missing; if so, say on stderr what to install."""
    missing = missing_modules(modules)
    if missing:
        print(extra_hint(command, extra, missing), file=sys.stderr)
    return bool(missing)


def extra_hint(command: str, extra: str, missing: Sequence[str]) -> str:
    """One line saying what to install for ``mechakit <command>``."""
    return (
        f"error: mechakit {command} needs the {extra} extra: pip install 'mechakit[{extra}]' "
        f"(not installed: {', '.join(missing)})"
    )
