"""configuration.in-memory: configuration items in this instance's memory, with subscriptions.

Applications and tests write items with :meth:`InMemoryConfigurationStore.set_items` and
:meth:`~InMemoryConfigurationStore.delete_items`; the ``items`` setting seeds them from
the Component YAML. Each key's version counts its writes (``"1"``, ``"2"``, ...) and keeps
counting after a delete, so a version is never reused for a key. Every subscription gets
its updates in write order from its own task, so a slow or failing handler neither blocks
writers nor other subscribers.
"""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mechakit.components.configuration._subscriptions import SubscribingStore
from mechakit.core.configuration import (
    ConfigurationHandler,
    ConfigurationItem,
    GetConfigurationRequest,
    SubscribeConfigurationRequest,
)
from mechakit.core.errors import InvalidRequestError, MetadataError
from mechakit.core.metadata import Settings, setting


class InMemoryConfigurationSettings(Settings):
    items: str = setting(
        "",
        description=(
            'Initial items as a JSON object: {"key": "value"} or '
            '{"key": {"value": "...", "metadata": {"name": "value"}}}.'
        ),
        example='{"greeting": "hello", "limit": 10}',
    )


class InMemoryConfigurationStore(SubscribingStore[InMemoryConfigurationSettings, "_Watch"]):
    def __init__(self) -> None:
        super().__init__()
        self._items: dict[str, ConfigurationItem] = {}
        self._versions: dict[str, int] = {}

    async def open(self) -> None:
        if self.settings.items.strip():
            await self.set_items(self._parse_items(self.settings.items))

    async def shut(self) -> None:
        await self._stop_all()

    async def ping(self) -> None:
        self.require_open()

    async def get(self, request: GetConfigurationRequest) -> dict[str, ConfigurationItem]:
        self.require_open()
        if not request.keys:
            return dict(self._items)
        return {key: self._items[key] for key in request.keys if key in self._items}

    async def subscribe(
        self, request: SubscribeConfigurationRequest, handler: ConfigurationHandler
    ) -> str:
        self.require_open()
        subscription_id = self.new_subscription_id()
        watch = _Watch(frozenset(request.keys), handler)
        watch.task = asyncio.create_task(
            self._deliver(subscription_id, watch), name=f"configuration:{subscription_id}"
        )
        self._watches[subscription_id] = watch
        return subscription_id

    async def stop_watch(self, watch: _Watch) -> None:
        """Stops delivery at once; a handler call already running is allowed to finish."""
        while not watch.queue.empty():
            watch.queue.get_nowait()
        watch.queue.put_nowait(None)
        if watch.task is not None and watch.task is not asyncio.current_task():
            await watch.task

    async def set_items(self, items: Mapping[str, str | ConfigurationItem]) -> None:
        """Writes items (a new version each) and tells the subscribers watching them."""
        self.require_open()
        written: dict[str, ConfigurationItem] = {}
        for key, given in items.items():
            self._check_key(key)
            if isinstance(given, ConfigurationItem):
                value, item_metadata = given.value, given.metadata
            elif isinstance(given, str):
                value, item_metadata = given, {}
            else:
                raise InvalidRequestError(
                    f"the value of configuration item {key!r} must be a string or "
                    f"ConfigurationItem, got {type(given).__name__}",
                    component=self.label,
                    key=key,
                )
            version = self._versions.get(key, 0) + 1
            written[key] = ConfigurationItem(
                value=value,
                version=str(version),
                metadata=types.MappingProxyType(dict(item_metadata)),
            )
        for key, item in written.items():
            self._versions[key] = int(item.version)
            self._items[key] = item
        self._notify(written)

    async def delete_items(self, keys: Iterable[str]) -> None:
        """Removes items; subscribers watching them get an empty item. Missing keys are ignored."""
        self.require_open()
        deleted: dict[str, ConfigurationItem] = {}
        for key in keys:
            self._check_key(key)
            if self._items.pop(key, None) is not None:
                deleted[key] = ConfigurationItem(value="")
        self._notify(deleted)

    def _notify(self, changed: Mapping[str, ConfigurationItem]) -> None:
        if not changed:
            return
        for watch in self._watches.values():
            seen = {k: v for k, v in changed.items() if not watch.keys or k in watch.keys}
            if seen:
                watch.queue.put_nowait(types.MappingProxyType(seen))

    async def _deliver(self, subscription_id: str, watch: _Watch) -> None:
        while (items := await watch.queue.get()) is not None:
            await self._hand_over(watch.handler, subscription_id, items)

    def _check_key(self, key: object) -> None:
        if not isinstance(key, str) or not key:
            raise InvalidRequestError(
                f"configuration keys must be non-empty strings, got {key!r}",
                component=self.label,
                field="key",
            )

    def _parse_items(self, raw: str) -> dict[str, ConfigurationItem]:
        def bad(reason: str) -> MetadataError:
            return MetadataError(f"metadata 'items' {reason}", component=self.label, field="items")

        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise bad(f"is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise bad('must be a JSON object such as {"key": "value"}')
        items: dict[str, ConfigurationItem] = {}
        for key, entry in parsed.items():
            if isinstance(entry, dict):
                value = _scalar_text(entry.get("value"))
                item_metadata = entry.get("metadata") or {}
                if not isinstance(item_metadata, dict):
                    raise bad(f"key {key!r}: 'metadata' must be an object")
                meta = {str(k): _scalar_text(v) for k, v in item_metadata.items()}
                texts = {k: v for k, v in meta.items() if v is not None}
                if value is None or len(texts) != len(meta):
                    raise bad(f"key {key!r}: 'value' and metadata values must be scalars")
                items[key] = ConfigurationItem(value=value, metadata=texts)
            else:
                value = _scalar_text(entry)
                if value is None:
                    raise bad(
                        f"key {key!r}: a value must be a string, number, boolean or "
                        '{"value": ..., "metadata": {...}}'
                    )
                items[key] = ConfigurationItem(value=value)
        return items


@dataclass(eq=False)
class _Watch:
    keys: frozenset[str]
    handler: ConfigurationHandler
    queue: asyncio.Queue[Mapping[str, ConfigurationItem] | None] = field(
        default_factory=asyncio.Queue
    )
    task: asyncio.Task[None] | None = None


def _scalar_text(value: Any) -> str | None:
    """JSON scalars as configuration text (``true``, ``10``); None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return None
