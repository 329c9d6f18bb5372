"""Configuration stores: get, subscribe, unsubscribe, once for every door.

Which subscriptions a door made (and how it delivers their updates) stays with the door.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mechakit.core.configuration import (
    ConfigurationHandler,
    ConfigurationItem,
    ConfigurationStore,
    GetConfigurationRequest,
    SubscribeConfigurationRequest,
)
from mechakit.core.errors import NotFoundError

from .errors import BlockService, failure


class ConfigurationService(BlockService[ConfigurationStore[Any]]):
    """The configuration stores ``find`` looks up by name."""

    CATEGORY = "configuration"
    NOT_FOUND = "ERR_CONFIGURATION_STORE_NOT_FOUND"
    NOT_FOUND_MESSAGE = "configuration store {name} not found"

    async def get(
        self, name: str, keys: Sequence[str], metadata: Mapping[str, str] | None = None
    ) -> dict[str, ConfigurationItem]:
        """The items that exist among ``keys`` (no keys: every item)."""
        store = self.component(name)
        request = GetConfigurationRequest(keys=list(keys), metadata=dict(metadata or {}))
        with failure(
            "ERR_CONFIGURATION_GET",
            f"failed to get {list(keys)} from Configuration store {name}",
            ("configuration", name),
        ):
            return await self.call(name, lambda: store.get(request))

    async def subscribe(
        self,
        name: str,
        keys: Sequence[str],
        handler: ConfigurationHandler,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Watch ``keys`` (empty: every key); the id ``unsubscribe`` takes."""
        store = self.component(name)
        request = SubscribeConfigurationRequest(keys=list(keys), metadata=dict(metadata or {}))
        with failure(
            "ERR_CONFIGURATION_SUBSCRIBE",
            f"failed to subscribe {list(keys)} from Configuration store {name}",
            ("configuration", name),
        ):
            return await self.call(name, lambda: store.subscribe(request, handler))

    async def unsubscribe(self, name: str, subscription_id: str, *, missing_ok: bool) -> None:
        """Stop a subscription; with ``missing_ok`` one the store no longer knows counts as
        stopped (a door that made it knows it existed), else it is NOT_FOUND."""
        store = self.component(name)
        with failure(
            "ERR_CONFIGURATION_UNSUBSCRIBE",
            f"failed to unsubscribe to configuration request {subscription_id}",
            ("configuration", name),
        ):
            try:
                await self.call(name, lambda: store.unsubscribe(subscription_id))
            except NotFoundError:
                if not missing_ok:
                    raise
