"""mechakit: Dapr-compatible component plug-ins for Python, and a minimal runtime around them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mechakit.core.registry import Registry
    from mechakit.runtime.local import Runtime
    from mechakit.runtime.manifest import Manifests, PathLike

__version__ = "0.1.0"


def open(
    resources: PathLike | Sequence[PathLike] | Manifests,
    *,
    app_id: str = "",
    registry: Registry | None = None,
    configuration: str | None = None,
) -> Runtime:
    """The components of a folder (or files) of Dapr YAML, used in-process.

    ``async with mechakit.open("components/", app_id="myapp") as rt:`` starts them all and
    closes them on exit; ``rt.state("statestore")``, ``rt.pubsub(...)``, ``rt.lock(...)``,
    ``rt.secrets(...)``, ``rt.binding(...)`` and ``rt.configuration(...)`` return typed
    clients. ``configuration`` names the ``kind: Configuration`` whose secret scopes apply
    (default: the only one loaded). Imported lazily so ``import mechakit`` stays light.
    """
    from mechakit.runtime.local import Runtime

    return Runtime(resources, app_id=app_id, registry=registry, configuration=configuration)


__all__ = ["__version__", "open"]
