"""mechakit: Dapr-compatible component plug-ins for Python, and a minimal runtime around them.

The application API is here, as httpx exports ``Client``: :func:`open` and :class:`Runtime`,
the typed clients it hands out (``mechakit.StateClient`` ...), ``TopicEvent``,
``DropMessage``, and every error of :mod:`mechakit.core.errors` (``mechakit.ETagError``
...). Everything is imported on first use, so ``import mechakit`` stays light (a driver
author's package imports only the core).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechakit.core.errors import *  # noqa: F403  (the error hierarchy, at the top)
    from mechakit.core.pubsub import DropMessage
    from mechakit.core.registry import Registry
    from mechakit.runtime.clients import *  # noqa: F403  (the typed clients, TopicEvent)
    from mechakit.runtime.in_process import Runtime
    from mechakit.runtime.manifest import Manifests, PathLike

__version__ = "0.1.0"

__all__ = [
    "BindingClient",
    "ConfigurationClient",
    "DropMessage",
    "LockClient",
    "PubSubClient",
    "Runtime",
    "SecretsClient",
    "StateClient",
    "TopicEvent",
    "__version__",
    "open",
]
"""The application API; every error of :mod:`mechakit.core.errors` is an attribute too."""

_HOMES = {
    **{name: "mechakit.runtime.clients" for name in __all__ if name.endswith(("Client", "Event"))},
    "Runtime": "mechakit.runtime.in_process",
    "DropMessage": "mechakit.core.pubsub",
}
"""Where each name lives; it is imported on first use."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        errors = importlib.import_module("mechakit.core.errors")
        if name not in errors.__all__:
            raise AttributeError(f"module 'mechakit' has no attribute {name!r}")
        home = errors.__name__
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    errors = importlib.import_module("mechakit.core.errors")
    return sorted({*globals(), *_HOMES, *errors.__all__})


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
    (default: the only one loaded).
    """
    from mechakit.runtime.in_process import Runtime

    return Runtime(resources, app_id=app_id, registry=registry, configuration=configuration)
