"""One error hierarchy for every component.

Every error a user sees names the component (``state.redis 'statestore'``), the field or
key involved, and what was wrong, so that the message alone says what to fix.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class MechakitError(Exception):
    """Base of every error mechakit raises on purpose.

    ``retriable`` tells callers (the runtime, retry loops) whether trying the same call
    again later can succeed.
    """

    retriable: bool = False

    def __init__(
        self,
        reason: str,
        *,
        component: str | None = None,
        field: str | None = None,
        key: str | None = None,
    ) -> None:
        self.reason = reason
        self.component = component
        self.field = field
        self.key = key
        super().__init__(self._render())

    def _render(self) -> str:
        prefix = f"{self.component}: " if self.component else ""
        return prefix + self.reason


class ConfigurationError(MechakitError):
    """A component or manifest is configured wrongly; fixing the configuration fixes it."""


class MetadataError(ConfigurationError):
    """A metadata field of a component is missing or has a wrong value."""


class ManifestError(ConfigurationError):
    """A manifest file (Component, Subscription, Configuration YAML) is invalid."""

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        component: str | None = None,
        field: str | None = None,
    ) -> None:
        self.file = file
        super().__init__(reason, component=component, field=field)

    def _render(self) -> str:
        parts = [p for p in (self.file, self.component) if p]
        return (": ".join(parts) + ": " if parts else "") + self.reason


class ComponentNotFoundError(ConfigurationError):
    """No installed plug-in provides the requested type and version."""


class MissingDependencyError(ConfigurationError):
    """The component is known but the package it needs is not installed."""


class ComponentError(MechakitError):
    """An operation on a component failed."""


NOT_OPEN = "the component is not open (init() has not completed, or it was closed)"


class ComponentNotOpenError(ComponentError):
    """An operation on a component that is not open: ``init`` has not completed, or it was
    closed. Not retriable: the same call succeeds only after a successful ``init``."""

    def __init__(
        self,
        reason: str = NOT_OPEN,
        *,
        component: str | None = None,
        field: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(reason, component=component, field=field, key=key)


class InvalidRequestError(ComponentError):
    """The request itself is wrong (bad option, bad key, bad metadata value)."""


class NotSupportedError(ComponentError):
    """The component does not implement the requested feature or operation."""


class ConnectionFailedError(ComponentError):
    """The backend could not be reached or dropped the connection; retrying may succeed."""

    retriable = True


class OperationTimeoutError(ConnectionFailedError):
    """The backend did not answer in time; the operation may or may not have happened."""


class ETagErrorKind(enum.Enum):
    MISMATCH = "mismatch"
    INVALID = "invalid"


class ETagError(ComponentError):
    """Raised only for a real ETag conflict: the stored ETag differs, or the given one is malformed.

    Nothing was written when this is raised.
    """

    def __init__(
        self,
        kind: ETagErrorKind,
        reason: str | None = None,
        *,
        component: str | None = None,
        key: str | None = None,
    ) -> None:
        self.kind = kind
        if reason is None:
            what = (
                "does not match the stored one" if kind is ETagErrorKind.MISMATCH else "is invalid"
            )
            reason = f"ETag for key {key!r} {what}" if key is not None else f"ETag {what}"
        super().__init__(reason, component=component, key=key)


class NotFoundError(ComponentError):
    """A named thing (secret, lock, file, subscription) does not exist."""


class SecretNotFoundError(NotFoundError):
    """The secret store has no secret with that name."""


class PermissionDeniedError(ComponentError):
    """The app may not do this, e.g. read a secret outside its Configuration's secret scopes."""


class BulkError(ComponentError):
    """Some items of a bulk operation failed; ``errors`` maps each failed key to its error.

    Items that are not in ``errors`` succeeded.
    """

    def __init__(self, errors: Mapping[str, Exception], *, component: str | None = None) -> None:
        self.errors = dict(errors)
        keys = ", ".join(repr(k) for k in list(self.errors)[:5])
        more = f" and {len(self.errors) - 5} more" if len(self.errors) > 5 else ""
        super().__init__(f"{len(self.errors)} item(s) failed: {keys}{more}", component=component)


__all__ = [
    "NOT_OPEN",
    "BulkError",
    "ComponentError",
    "ComponentNotFoundError",
    "ComponentNotOpenError",
    "ConfigurationError",
    "ConnectionFailedError",
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
    "PermissionDeniedError",
    "SecretNotFoundError",
]
