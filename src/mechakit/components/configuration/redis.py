"""configuration.redis: items are Redis strings ``value||version``, watched by keyspace events.

A string without ``||`` is an item with version ``""``; the version is the text after the
last ``||``, so values may contain ``||`` themselves. Reading every key uses SCAN (never
KEYS) and only looks at string keys, so other data in the database is left alone.

Subscriptions listen to keyspace notifications on their own connection (on a Redis Cluster,
one per primary node, since each node announces only its own keys). A notification
says only that a key changed, so the key is read again and the item delivered unless it
equals the one delivered last; a deleted or expired key is delivered as an empty item.
Subscribing turns the notifications on with CONFIG SET when the server lacks them, and
says which server setting to change when CONFIG is not allowed. After a lost connection
the subscription reconnects, and re-reads the keys it names so no final value is missed.
On a cluster the primaries are those of the time of subscribing: a primary added later is
watched by subscriptions made after it joined.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mechakit.components._shared.redis import (
    RedisDriver,
    RedisSettings,
    is_cluster,
    map_error,
    redis_errors,
)
from mechakit.components.configuration._subscriptions import SubscribingStore
from mechakit.core.component import stop_tasks
from mechakit.core.configuration import (
    ConfigurationHandler,
    ConfigurationItem,
    GetConfigurationRequest,
    SubscribeConfigurationRequest,
)
from mechakit.core.errors import (
    ComponentError,
    ConnectionFailedError,
)

SEPARATOR = "||"
NOTIFY_SETTING = "notify-keyspace-events"
_SCAN_BATCH = 500
_MAX_BACKOFF = 5.0


class RedisConfigurationSettings(RedisSettings):
    """The common Redis settings."""


class RedisConfigurationStore(
    RedisDriver[RedisConfigurationSettings],
    SubscribingStore[RedisConfigurationSettings, "_Watch"],
):
    async def shut(self) -> None:
        await self._stop_all()
        await super().shut()

    async def get(self, request: GetConfigurationRequest) -> dict[str, ConfigurationItem]:
        with redis_errors(self.label, action="get configuration"):
            keys = list(request.keys) or await self._all_keys()
            values: list[bytes | None] = []
            for start in range(0, len(keys), _SCAN_BATCH):
                values += await self._mget(keys[start : start + _SCAN_BATCH])
        return {
            key: parse_item(value)
            for key, value in zip(keys, values, strict=True)
            if value is not None
        }

    async def subscribe(
        self, request: SubscribeConfigurationRequest, handler: ConfigurationHandler
    ) -> str:
        self.require_open()
        settings = self.settings
        nodes = await self._nodes()
        for node in nodes:
            await self._enable_notifications(node)
        subscription_id = self.new_subscription_id()
        watch = _Watch(
            keys=tuple(dict.fromkeys(request.keys)),
            handler=handler,
            prefix=f"__keyspace@{settings.redis_db}__:",
        )
        try:
            for node in nodes:
                watch.listeners.append(_Listener(node, await self._listen(watch, node)))
        except BaseException:
            await _close_listeners(watch)
            raise
        for listener in watch.listeners:
            listener.task = asyncio.create_task(
                self._run(subscription_id, watch, listener),
                name=f"configuration.redis:{subscription_id}",
            )
        self._watches[subscription_id] = watch
        return subscription_id

    async def stop_watch(self, watch: _Watch) -> None:
        await stop_tasks(*(listener.task for listener in watch.listeners if listener.task))
        await _close_listeners(watch)

    async def _all_keys(self) -> list[str]:
        keys: dict[str, None] = {}
        async for raw in self._redis.scan_iter(count=_SCAN_BATCH, _type="string"):
            with contextlib.suppress(UnicodeDecodeError):  # not a key a configuration user can name
                keys[raw.decode()] = None
        return list(keys)

    async def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if is_cluster(self._redis):
            return list(await self._redis.mget_nonatomic(keys))
        return list(await self._redis.mget(keys))

    async def _nodes(self) -> list[Any]:
        """Where notifications come from: [None] for one server, else every cluster primary."""
        if not is_cluster(self._redis):
            return [None]
        with redis_errors(self.label, action="find the cluster's primary nodes"):
            await self._redis.initialize()
            return list(self._redis.get_primaries())

    async def _enable_notifications(self, node: Any) -> None:
        """Add the keyspace-event classes subscriptions need (K, and A or g$x) when missing.

        Where CONFIG is disabled altogether (some managed services) the setting cannot be
        read, so subscribing goes ahead with a warning instead of failing.
        """
        on_node: dict[str, Any] = {} if node is None else {"target_nodes": node}
        action = f"CONFIG GET {NOTIFY_SETTING}" + ("" if node is None else f" on {node.name}")
        try:
            current = await self._redis.config_get(NOTIFY_SETTING, **on_node)
        except Exception as exc:
            error = map_error(exc, component=self.label, action=action)
            if error.retriable:
                raise error from exc
            self.log.warning(
                "%s: cannot read %s (%s); make sure it includes 'K' and 'A' or 'g$x', "
                "or subscriptions receive nothing",
                self.label,
                NOTIFY_SETTING,
                exc,
            )
            return
        flags = _text(current.get(NOTIFY_SETTING, ""))
        missing = "" if "K" in flags else "K"
        if "A" not in flags:
            missing += "".join(c for c in "g$x" if c not in flags)
        if not missing:
            return
        action = f"CONFIG SET {NOTIFY_SETTING}" + ("" if node is None else f" on {node.name}")
        try:
            await self._redis.config_set(NOTIFY_SETTING, flags + missing, **on_node)
        except Exception as exc:
            error = map_error(exc, component=self.label, action=action)
            if error.retriable:
                raise error from exc
            raise ComponentError(
                f"subscribe needs keyspace notifications: the server setting {NOTIFY_SETTING!r} "
                f"is {flags!r} and CONFIG SET was refused ({exc}); set {NOTIFY_SETTING} to "
                "include 'K' and 'A' (or 'g$x'), e.g. 'KA', on the server",
                component=self.label,
                field=NOTIFY_SETTING,
            ) from exc

    async def _listen(self, watch: _Watch, node: Any) -> Any:
        """A pub/sub connection subscribed to the watch's keys, confirmed by the server."""
        pubsub = self._redis.pubsub() if node is None else self._redis.pubsub(node=node)
        try:
            with redis_errors(self.label, action="subscribe to keyspace notifications"):
                if watch.keys:
                    await pubsub.subscribe(*(watch.prefix + key for key in watch.keys))
                    expected = len(watch.keys)
                else:
                    await pubsub.psubscribe(watch.prefix + "*")
                    expected = 1
                timeout = self.settings.socket_timeout
                async with asyncio.timeout(timeout):
                    while expected:
                        message = await pubsub.get_message(timeout=timeout)
                        if message and message["type"] in ("subscribe", "psubscribe"):
                            expected -= 1
        except BaseException:
            await _close_pubsub(pubsub)
            raise
        return pubsub

    async def _run(self, subscription_id: str, watch: _Watch, listener: _Listener) -> None:
        backoff = 0.1
        while True:
            try:
                message = await listener.pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except Exception as exc:
                self.log.warning(
                    "%s: configuration subscription %s lost its connection (%s); reconnecting",
                    self.label,
                    subscription_id,
                    exc,
                )
                await _close_pubsub(listener.pubsub)
                listener.pubsub = None
                while listener.pubsub is None:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    with contextlib.suppress(Exception):
                        listener.pubsub = await self._listen(watch, listener.node)
                for key in watch.keys:
                    await self._deliver(subscription_id, watch, key, resync=True)
                continue
            backoff = 0.1
            if message is None or message.get("type") not in ("message", "pmessage"):
                continue
            channel = _text(message["channel"])
            if channel.startswith(watch.prefix):
                await self._deliver(subscription_id, watch, channel[len(watch.prefix) :])

    async def _deliver(
        self, subscription_id: str, watch: _Watch, key: str, *, resync: bool = False
    ) -> None:
        """Read ``key`` and hand it to the handler unless nothing changed since last time.

        ``resync`` (after a reconnect): a key that is absent and was never delivered is
        skipped, as there was no event for it.
        """
        try:
            with redis_errors(self.label, key=key, action="read changed configuration item"):
                raw = await self._redis.get(key)
        except ConnectionFailedError as exc:
            self.log.warning("%s: %s", self.label, exc)
            return
        except ComponentError:
            return  # not a string key (e.g. a hash written by someone else): not configuration
        item = ConfigurationItem(value="") if raw is None else parse_item(raw)
        marker = None if raw is None else (item.value, item.version)
        if key in watch.last and watch.last[key] == marker:
            return
        if resync and marker is None and key not in watch.last:
            return
        if await self._hand_over(watch.handler, subscription_id, {key: item}):
            watch.last[key] = marker


def parse_item(raw: bytes | str) -> ConfigurationItem:
    """``value||version`` → item; a string without ``||`` has version ``""``."""
    text = _text(raw)
    value, separator, version = text.rpartition(SEPARATOR)
    if not separator:
        return ConfigurationItem(value=text)
    return ConfigurationItem(value=value, version=version)


def format_item(value: str, version: str) -> str:
    return f"{value}{SEPARATOR}{version}" if version else value


@dataclass
class _Listener:
    """One pub/sub connection of a subscription and the task reading it."""

    node: Any
    """None for a standalone server, else the cluster primary it listens to."""
    pubsub: Any
    task: asyncio.Task[None] | None = None


@dataclass
class _Watch:
    keys: tuple[str, ...]
    handler: ConfigurationHandler
    prefix: str
    listeners: list[_Listener] = field(default_factory=list)
    last: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    """The item last handled per key (None: deleted), so repeated events are not resent."""


def _text(value: bytes | str) -> str:
    """Configuration is text; bytes that are not UTF-8 are shown with replacement marks."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def _close_listeners(watch: _Watch) -> None:
    for listener in watch.listeners:
        await _close_pubsub(listener.pubsub)


async def _close_pubsub(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):
            await pubsub.aclose()


__all__ = [
    "RedisConfigurationSettings",
    "RedisConfigurationStore",
    "format_item",
    "parse_item",
]
