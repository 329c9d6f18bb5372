"""mechakit: Dapr-compatible component plug-ins for Python, and a minimal runtime around them.

The application API is here, as httpx exports ``Client``: :func:`open` and :class:`Runtime`,
the typed clients it hands out, and the errors they raise. Everything is imported on first
use, so ``import mechakit`` stays light (a driver author's package imports only the core).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechakit.core.errors import (
        BulkError,
        ComponentError,
        ComponentNotOpenError,
        ConfigurationError,
        ConnectionFailedError,
        ETagError,
        ETagErrorKind,
        InvalidRequestError,
        MechakitError,
        NotFoundError,
        NotSupportedError,
        PermissionDeniedError,
    )
    from mechakit.core.pubsub import DropMessage
    from mechakit.core.registry import Registry
    from mechakit.runtime.clients import (
        BindingClient,
        ConfigurationClient,
        LockClient,
        PubSubClient,
        SecretsClient,
        StateClient,
        TopicEvent,
    )
    from mechakit.runtime.in_process import Runtime
    from mechakit.runtime.manifest import Manifests, PathLike

__version__ = "0.1.0"

_LAZY = {
    "Runtime": "mechakit.runtime.in_process",
    **dict.fromkeys(
        (
            "BindingClient",
            "ConfigurationClient",
            "LockClient",
            "PubSubClient",
            "SecretsClient",
            "StateClient",
            "TopicEvent",
        ),
        "mechakit.runtime.clients",
    ),
    "DropMessage": "mechakit.core.pubsub",
    **dict.fromkeys(
        (
            "BulkError",
            "ComponentError",
            "ComponentNotOpenError",
            "ConfigurationError",
            "ConnectionFailedError",
            "ETagError",
            "ETagErrorKind",
            "InvalidRequestError",
            "MechakitError",
            "NotFoundError",
            "NotSupportedError",
            "PermissionDeniedError",
        ),
        "mechakit.core.errors",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mechakit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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


__all__ = [
    "BindingClient",
    "BulkError",
    "ComponentError",
    "ComponentNotOpenError",
    "ConfigurationClient",
    "ConfigurationError",
    "ConnectionFailedError",
    "DropMessage",
    "ETagError",
    "ETagErrorKind",
    "InvalidRequestError",
    "LockClient",
    "MechakitError",
    "NotFoundError",
    "NotSupportedError",
    "PermissionDeniedError",
    "PubSubClient",
    "Runtime",
    "SecretsClient",
    "StateClient",
    "TopicEvent",
    "__version__",
    "open",
]
