"""The name resolution contract: which address serves an app id (components-contrib's
``nameresolution``), and for registries, how a sidecar announces its own."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from .component import Component, SettingsT
from .errors import InvalidRequestError

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class ResolveRequest:
    """An app id to find, in a namespace; ``port`` is the caller's default internal port,
    used by resolvers that compute addresses instead of looking them up."""

    app_id: str
    namespace: str = DEFAULT_NAMESPACE
    port: int = 0
    exclude: frozenset[str] = frozenset()
    """Addresses that just did not answer: a resolver that knows others returns one of
    them (a sidecar killed without unregistering is still listed until it expires)."""

    def __post_init__(self) -> None:
        if not isinstance(self.app_id, str) or not self.app_id:
            raise InvalidRequestError("app id must be a non-empty string", field="appId")


@dataclass(frozen=True)
class Registration:
    """What a sidecar announces: its app id and namespace, and where its internal gRPC API
    listens (``host:port``)."""

    app_id: str
    address: str
    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not self.app_id:
            raise InvalidRequestError("app id must be a non-empty string", field="appId")
        if not self.address:
            raise InvalidRequestError("address must be a non-empty host:port", field="address")


class NameResolver(Component[SettingsT]):
    """Finds the internal gRPC address of an app id's sidecar."""

    @abstractmethod
    async def resolve(self, request: ResolveRequest) -> str:
        """One ``host:port`` serving ``request.app_id``; ``NotFoundError`` when none does."""


class NameRegistry(NameResolver[SettingsT]):
    """A resolver sidecars register with (sqlite, mdns, consul): they announce themselves
    while they run and withdraw on stop, so a stopped sidecar is no longer picked."""

    @abstractmethod
    async def register(self, registration: Registration) -> None:
        """Announce ``registration`` and keep it fresh until ``unregister`` or ``close``."""

    @abstractmethod
    async def unregister(self) -> None:
        """Withdraw what ``register`` announced (nothing when nothing was)."""


__all__ = [
    "DEFAULT_NAMESPACE",
    "NameRegistry",
    "NameResolver",
    "Registration",
    "ResolveRequest",
]
