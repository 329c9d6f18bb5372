"""Where ``mechakit run`` and ``mechakit init`` keep things, and the components they default to.

The home folder is ``$MECHAKIT_HOME``, else ``~/.mechakit`` (``~`` from ``$HOME``), so tests
and sandboxes never need to touch a real home folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HOME_VARIABLE = "MECHAKIT_HOME"


def mechakit_home() -> Path:
    configured = os.environ.get(HOME_VARIABLE)
    return Path(configured).expanduser() if configured else Path.home() / ".mechakit"


def components_dir(home: Path | None = None) -> Path:
    """The folder ``mechakit run`` loads when no ``--resources-path`` is given."""
    return (home or mechakit_home()) / "components"


def default_components(home: Path) -> dict[str, str]:
    """File name → Component YAML: state in ``home/state.db``, pub/sub and locks in memory.

    Everything runs without a server, so ``mechakit run`` works right after ``pip install``.
    """
    return {
        "statestore.yaml": _component(
            "statestore", "state.sqlite", {"connectionString": str(home / "state.db")}
        ),
        "pubsub.yaml": _component("pubsub", "pubsub.in-memory"),
        "lockstore.yaml": _component("lockstore", "lock.in-memory"),
    }


def _component(name: str, type_: str, metadata: dict[str, str] | None = None) -> str:
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
        for key, value in metadata.items():
            # A JSON string is a valid YAML double-quoted scalar, whatever the path holds.
            lines += [f"    - name: {key}", f"      value: {json.dumps(value)}"]
    else:
        lines.append("  metadata: []")
    return "\n".join(lines) + "\n"


__all__ = ["HOME_VARIABLE", "components_dir", "default_components", "mechakit_home"]
