"""Helpers for runtime tests: YAML resources written into a fresh folder."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

WriteFiles = Callable[..., Path]


@pytest.fixture
def resources(tmp_path: Path) -> WriteFiles:
    """``resources(a="yaml text", ...)`` writes ``a.yaml`` etc. into one folder and returns it."""
    folder = tmp_path / "components"
    folder.mkdir()

    def write(**files: str) -> Path:
        for name, text in files.items():
            filename = name if "." in name else f"{name}.yaml"
            (folder / filename).write_text(textwrap.dedent(text).lstrip())
        return folder

    return write


def _component(name: str, type_: str, *metadata: tuple[str, str], extra: str = "") -> str:
    """A Component document with plain metadata values; ``extra`` is appended verbatim.

    ``extra="  initTimeout: 1s\n"`` adds a spec field, ``extra="scopes: [a]\n"`` a top-level one.
    """
    lines = [
        "apiVersion: dapr.io/v1alpha1",
        "kind: Component",
        "metadata:",
        f"  name: {name}",
        "spec:",
        f"  type: {type_}",
        "  version: v1",
    ]
    if metadata:
        lines.append("  metadata:")
        for key, value in metadata:
            lines += [f"    - name: {key}", f"      value: {value!r}"]
    return "\n".join(lines) + "\n" + extra


@pytest.fixture
def component() -> Callable[..., str]:
    """``component("statestore", "state.sqlite", ("connectionString", "x.db"), extra="...")``."""
    return _component
