"""mechakit's contracts: component types, requests and responses, errors, metadata, discovery.

Nothing here performs I/O or imports a backend SDK. The errors come with the package; the
other names are imported on first use, so that what needs only the registry or an error
class (``mechakit components list``) does not pay for pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import *  # noqa: F403  (the whole hierarchy, as listed in errors.__all__)

if TYPE_CHECKING:
    from .component import Component, ComponentMetadata, Subscription, TaskSubscription
    from .metadata import Bool, ByteSize, Duration, Sensitive, Settings, StrList, setting
    from .registry import ComponentSpec, Registry, default_registry, hookimpl

_HOMES = {
    **dict.fromkeys(
        ("Component", "ComponentMetadata", "Subscription", "TaskSubscription"), "component"
    ),
    **dict.fromkeys(
        ("Bool", "ByteSize", "Duration", "Sensitive", "Settings", "StrList", "setting"), "metadata"
    ),
    **dict.fromkeys(("ComponentSpec", "Registry", "default_registry", "hookimpl"), "registry"),
}
"""The module of each name imported on first use."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Bool",
    "ByteSize",
    "Component",
    "ComponentMetadata",
    "ComponentSpec",
    "Duration",
    "Registry",
    "Sensitive",
    "Settings",
    "StrList",
    "Subscription",
    "TaskSubscription",
    "default_registry",
    "hookimpl",
    "setting",
    *errors.__all__,
]
