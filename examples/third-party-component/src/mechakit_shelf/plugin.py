"""The plug-in module named by the ``mechakit.components`` entry point.

It only describes the driver; mechakit imports ``mechakit_shelf.store`` when a component of
this type is built.
"""

from __future__ import annotations

from mechakit.core import ComponentSpec, hookimpl


@hookimpl
def mechakit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            "state.shelf",
            "mechakit_shelf.store:ShelfStateStore",
            status="alpha",
            description="Example: state in one JSON file, with ETags.",
        )
    ]
