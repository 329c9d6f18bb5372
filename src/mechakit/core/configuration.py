"""The configuration store contract: versioned items, read and watched."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .component import Component, SettingsT


@dataclass(frozen=True)
class ConfigurationItem:
    """A value and its version; a deleted key is delivered to subscribers as an empty item."""

    value: str
    version: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GetConfigurationRequest:
    keys: Sequence[str] = ()
    """Empty means every key."""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubscribeConfigurationRequest:
    keys: Sequence[str] = ()
    """Empty means every key."""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ConfigurationUpdate:
    subscription_id: str
    items: Mapping[str, ConfigurationItem]


ConfigurationHandler = Callable[[ConfigurationUpdate], Awaitable[None]]


class ConfigurationStore(Component[SettingsT]):
    @abstractmethod
    async def get(self, request: GetConfigurationRequest) -> dict[str, ConfigurationItem]:
        """The requested items that exist (missing keys are absent from the result)."""

    @abstractmethod
    async def subscribe(
        self, request: SubscribeConfigurationRequest, handler: ConfigurationHandler
    ) -> str:
        """Start watching; returns the subscription id that ``unsubscribe`` takes."""

    @abstractmethod
    async def unsubscribe(self, subscription_id: str) -> None:
        """Stop a subscription; ``NotFoundError`` for an unknown id."""
