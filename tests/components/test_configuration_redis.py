"""configuration.redis beyond the conformance suite: the stored format, notifications."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from mechakit.components.configuration.redis import parse_item
from mechakit.conformance.backends import BackendInfo
from mechakit.core.configuration import (
    ConfigurationItem,
    ConfigurationUpdate,
    GetConfigurationRequest,
    SubscribeConfigurationRequest,
)

if TYPE_CHECKING:
    from redis_server import RedisDriver

pytest_plugins = ["redis_server"]  # fixtures redis_server, redis_driver, raw_redis

WAIT = 5.0


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


class Received:
    """Records updates; ``next()`` waits (boundedly) for the next one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ConfigurationUpdate] = asyncio.Queue()

    async def __call__(self, update: ConfigurationUpdate) -> None:
        await self.queue.put(update)

    async def next(self) -> dict[str, ConfigurationItem]:
        return dict((await asyncio.wait_for(self.queue.get(), WAIT)).items)


@pytest.mark.parametrize(
    ("stored", "item"),
    [
        ("on||3", ConfigurationItem("on", "3")),
        ("plain", ConfigurationItem("plain", "")),
        ("a||b||7", ConfigurationItem("a||b", "7")),
        ("", ConfigurationItem("", "")),
    ],
)
def test_stored_string_is_value_then_version_after_the_last_separator(
    stored: str, item: ConfigurationItem
) -> None:
    assert parse_item(stored.encode()) == item


async def test_subscriber_sees_add_update_and_delete_as_empty_item(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    store = await redis_driver("configuration.redis")
    key = new_key("watched")
    received = Received()
    await store.subscribe(SubscribeConfigurationRequest(keys=[key]), received)

    await raw_redis.set(key, "blue||1")
    assert await received.next() == {key: ConfigurationItem("blue", "1")}
    await raw_redis.set(key, "green||2")
    assert await received.next() == {key: ConfigurationItem("green", "2")}
    await raw_redis.delete(key)
    assert await received.next() == {key: ConfigurationItem("", "")}


async def test_expired_key_is_delivered_as_deleted(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    store = await redis_driver("configuration.redis")
    key = new_key("expiring")
    received = Received()
    await store.subscribe(SubscribeConfigurationRequest(keys=[key]), received)
    await raw_redis.set(key, "short||1", px=200)
    assert await received.next() == {key: ConfigurationItem("short", "1")}
    assert await received.next() == {key: ConfigurationItem("", "")}


async def test_subscribe_turns_keyspace_notifications_on_when_the_server_has_them_off(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    store = await redis_driver("configuration.redis")
    original = (await raw_redis.config_get("notify-keyspace-events"))["notify-keyspace-events"]
    await raw_redis.config_set("notify-keyspace-events", "")
    try:
        key = new_key("enabled")
        received = Received()
        await store.subscribe(SubscribeConfigurationRequest(keys=[key]), received)
        flags = (await raw_redis.config_get("notify-keyspace-events"))["notify-keyspace-events"]
        assert "K" in flags and ("A" in flags or {"g", "$", "x"} <= set(flags))
        await raw_redis.set(key, "now||1")
        assert await received.next() == {key: ConfigurationItem("now", "1")}
    finally:
        await raw_redis.config_set("notify-keyspace-events", original)


async def test_get_of_every_key_scans_instead_of_keys_and_skips_other_types(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    store = await redis_driver("configuration.redis")
    text, other = new_key("text"), new_key("hash")
    await raw_redis.set(text, "v||1")
    await raw_redis.hset(other, "field", "x")
    before = await raw_redis.info("commandstats")

    items = await store.get(GetConfigurationRequest())

    after = await raw_redis.info("commandstats")
    assert items[text] == ConfigurationItem("v", "1")
    assert other not in items
    assert after.get("cmdstat_keys") == before.get("cmdstat_keys")
    assert after["cmdstat_scan"]["calls"] > before.get("cmdstat_scan", {"calls": 0})["calls"]


async def test_handler_failure_does_not_stop_the_subscription(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    store = await redis_driver("configuration.redis")
    key = new_key("flaky")
    received = Received()
    calls = 0

    async def flaky(update: ConfigurationUpdate) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await received(update)

    await store.subscribe(SubscribeConfigurationRequest(keys=[key]), flaky)
    await raw_redis.set(key, "first||1")
    await raw_redis.set(key, "second||2")
    assert await received.next() == {key: ConfigurationItem("second", "2")}


@pytest.mark.fault
@pytest.mark.parametrize("retries", ["3", "0"], ids=["client-retries", "no-client-retries"])
async def test_subscription_survives_a_server_restart(
    redis_driver: RedisDriver, redis_server: BackendInfo, raw_redis: Any, retries: str
) -> None:
    """With retries redis-py reconnects itself; without, the driver's own loop must."""
    if redis_server.restart is None:
        pytest.skip("the redis backend was not started by this test run")
    store = await redis_driver("configuration.redis", maxRetries=retries)
    key = new_key("restart")
    received = Received()
    await store.subscribe(SubscribeConfigurationRequest(keys=[key]), received)
    await asyncio.to_thread(redis_server.restart)

    async def until_delivered() -> dict[str, ConfigurationItem]:
        for version in itertools.count(1):
            await raw_redis.set(key, f"after||{version}")
            with contextlib.suppress(TimeoutError):
                items = await asyncio.wait_for(received.next(), 0.5)
                if items[key].value == "after":
                    return items
        raise AssertionError("unreachable")

    items = await asyncio.wait_for(until_delivered(), 15)
    assert items[key].value == "after"
