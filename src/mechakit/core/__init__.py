"""mechakit's contracts: component types, requests and responses, errors, metadata, discovery.

Nothing here performs I/O or imports a backend SDK.
"""

from .component import Component, ComponentMetadata, Subscription, TaskSubscription
from .errors import (
    BulkError,
    ComponentError,
    ComponentNotFoundError,
    ConfigurationError,
    ConnectionFailedError,
    ETagError,
    ETagErrorKind,
    InvalidRequestError,
    ManifestError,
    MechakitError,
    MetadataError,
    MissingDependencyError,
    NotFoundError,
    NotSupportedError,
    OperationTimeoutError,
    SecretNotFoundError,
)
from .metadata import Bool, ByteSize, Duration, Sensitive, Settings, StrList, setting
from .registry import ComponentSpec, Registry, default_registry, hookimpl

__all__ = [
    "Bool",
    "BulkError",
    "ByteSize",
    "Component",
    "ComponentError",
    "ComponentMetadata",
    "ComponentNotFoundError",
    "ComponentSpec",
    "ConfigurationError",
    "ConnectionFailedError",
    "Duration",
    "ETagError",
    "ETagErrorKind",
    "InvalidRequestError",
    "ManifestError",
    "MechakitError",
    "MetadataError",
    "MissingDependencyError",
    "NotFoundError",
    "NotSupportedError",
    "OperationTimeoutError",
    "Registry",
    "SecretNotFoundError",
    "Sensitive",
    "Settings",
    "StrList",
    "Subscription",
    "TaskSubscription",
    "default_registry",
    "hookimpl",
    "setting",
]
