"""What the configuration stores share: their subscriptions, kept by id.

Every store hands out a fresh id per subscription, refuses an unknown id alike, stops a
subscription's work when it ends (or the store closes), and logs a failing handler
without letting it stop the deliveries that follow.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Generic, TypeVar

from mechakit.core.component import SettingsT
from mechakit.core.configuration import (
    ConfigurationHandler,
    ConfigurationItem,
    ConfigurationStore,
    ConfigurationUpdate,
)
from mechakit.core.errors import NotFoundError

WatchT = TypeVar("WatchT")


class SubscribingStore(ConfigurationStore[SettingsT], Generic[SettingsT, WatchT]):
    """A configuration store whose subscriptions are ``WatchT`` values, by id."""

    def __init__(self) -> None:
        super().__init__()
        self._watches: dict[str, WatchT] = {}

    @staticmethod
    def new_subscription_id() -> str:
        return str(uuid.uuid4())

    async def unsubscribe(self, subscription_id: str) -> None:
        """Stops the subscription's delivery; ``NotFoundError`` for an unknown id."""
        self.require_open()
        await self._stop(subscription_id)

    async def stop_watch(self, watch: WatchT) -> None:
        """Release what one subscription runs (tasks, connections); nothing by default."""

    async def _stop(self, subscription_id: str) -> None:
        watch = self._watches.pop(subscription_id, None)
        if watch is None:
            raise NotFoundError(
                f"no configuration subscription with id {subscription_id!r}",
                component=self.label,
                key=subscription_id,
            )
        await self.stop_watch(watch)

    async def _stop_all(self) -> None:
        """Stop every subscription (``shut`` calls it)."""
        for subscription_id in list(self._watches):
            await self._stop(subscription_id)

    async def _hand_over(
        self,
        handler: ConfigurationHandler,
        subscription_id: str,
        items: Mapping[str, ConfigurationItem],
    ) -> bool:
        """Give ``items`` to a subscription's handler; False (and logged) when it failed."""
        try:
            await handler(ConfigurationUpdate(subscription_id, items))
        except Exception:
            self.log.exception(
                "%s: handler of configuration subscription %s failed on keys %s",
                self.label,
                subscription_id,
                ", ".join(sorted(items)),
            )
            return False
        return True


__all__ = ["SubscribingStore"]
