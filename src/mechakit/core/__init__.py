"""mechakit's contracts: component types, requests and responses, errors, metadata, discovery.

Nothing here performs I/O or imports a backend SDK.
"""

from . import errors
from .component import Component, ComponentMetadata, Subscription, TaskSubscription
from .errors import *  # noqa: F403  (the whole hierarchy, as listed in errors.__all__)
from .metadata import Bool, ByteSize, Duration, Sensitive, Settings, StrList, setting
from .registry import ComponentSpec, Registry, default_registry, hookimpl

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
