"""configuration.in-memory beyond the conformance suite: seeding, versions, handler failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mechakit.components.configuration.in_memory import InMemoryConfigurationStore
from mechakit.conformance.suites.configuration import Updates
from mechakit.core.component import ComponentMetadata
from mechakit.core.configuration import (
    ConfigurationItem,
    ConfigurationUpdate,
    GetConfigurationRequest,
    SubscribeConfigurationRequest,
)
from mechakit.core.errors import (
    ComponentNotOpenError,
    InvalidRequestError,
    MetadataError,
    NotFoundError,
)
from mechakit.core.registry import default_registry

Factory = Callable[..., Awaitable[InMemoryConfigurationStore]]
TIMEOUT = 5.0
ALL = GetConfigurationRequest()


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    made: list[InMemoryConfigurationStore] = []

    async def build(**properties: str) -> InMemoryConfigurationStore:
        store = InMemoryConfigurationStore()
        await store.init(ComponentMetadata("config", "configuration.in-memory", properties))
        made.append(store)
        return store

    yield build
    for store in made:
        await store.close()


def test_registry_builds_the_driver_from_its_type_string() -> None:
    created = default_registry().create("configuration.in-memory")
    assert isinstance(created, InMemoryConfigurationStore)


async def test_items_setting_seeds_values_and_metadata(make: Factory) -> None:
    store = await make(
        items='{"greeting": "hello", "limit": 10, "debug": false,'
        ' "colour": {"value": "blue", "metadata": {"owner": "ui", "rank": 1}}}'
    )
    items = await store.get(ALL)
    assert {k: v.value for k, v in items.items()} == {
        "greeting": "hello",
        "limit": "10",
        "debug": "false",
        "colour": "blue",
    }
    assert dict(items["colour"].metadata) == {"owner": "ui", "rank": "1"}
    assert {v.version for v in items.values()} == {"1"}


@pytest.mark.parametrize(
    "items",
    [
        '{"a": ',
        '["a"]',
        '{"a": null}',
        '{"a": [1]}',
        '{"a": {"metadata": {}}}',
        '{"a": {"value": "x", "metadata": 3}}',
    ],
    ids=["not-json", "not-object", "null", "list", "no-value", "bad-metadata"],
)
async def test_malformed_items_setting_fails_init_naming_the_field(
    make: Factory, items: str
) -> None:
    with pytest.raises(MetadataError) as info:
        await make(items=items)
    assert info.value.field == "items"
    assert "configuration.in-memory 'config'" in str(info.value)


async def test_versions_count_writes_per_key_and_survive_a_delete(make: Factory) -> None:
    store = await make()
    await store.set_items({"a": "1", "b": "1"})
    await store.set_items({"a": "2"})
    await store.delete_items(["a"])
    await store.set_items({"a": "3"})
    items = await store.get(ALL)
    assert (items["a"].value, items["a"].version) == ("3", "3")
    assert items["b"].version == "1"


async def test_set_items_accepts_items_with_metadata(make: Factory) -> None:
    store = await make()
    await store.set_items({"a": ConfigurationItem("x", version="99", metadata={"m": "1"})})
    item = (await store.get(GetConfigurationRequest(keys=["a"])))["a"]
    assert (item.value, item.version, dict(item.metadata)) == ("x", "1", {"m": "1"})


@pytest.mark.parametrize("items", [{"": "x"}, {"a": 1}])
async def test_invalid_writes_are_rejected_and_change_nothing(
    make: Factory, items: dict[str, object]
) -> None:
    store = await make()
    await store.set_items({"kept": "x"})
    with pytest.raises(InvalidRequestError) as info:
        await store.set_items({"kept": "changed", **items})  # type: ignore[dict-item]
    assert info.value.component == "configuration.in-memory 'config'"
    assert (await store.get(ALL))["kept"].value == "x"


async def test_one_write_reaches_a_subscriber_as_one_update(make: Factory) -> None:
    store = await make()
    updates = Updates()
    await store.subscribe(SubscribeConfigurationRequest(keys=["a", "b"]), updates)
    await store.set_items({"a": "1", "b": "2", "c": "3"})
    await updates.wait_for_value("b", "2", TIMEOUT)
    assert len(updates.received) == 1
    assert set(updates.received[0].items) == {"a", "b"}


async def test_deleting_a_missing_key_notifies_nobody(make: Factory) -> None:
    store = await make()
    updates = Updates()
    await store.subscribe(SubscribeConfigurationRequest(), updates)
    await store.delete_items(["never-set"])
    await store.set_items({"marker": "x"})
    await updates.wait_for_value("marker", "x", TIMEOUT)
    assert updates.keys() == {"marker"}


async def test_failing_handler_is_logged_and_still_gets_later_updates(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    store = await make()
    seen: list[str] = []

    async def fragile(update: ConfigurationUpdate) -> None:
        seen.append(update.items["a"].value)
        if len(seen) == 1:
            raise RuntimeError("handler bug")

    later = Updates()
    with caplog.at_level(logging.ERROR, logger="mechakit.configuration.in-memory"):
        subscription_id = await store.subscribe(SubscribeConfigurationRequest(["a"]), fragile)
        await store.subscribe(SubscribeConfigurationRequest(["a"]), later)
        await store.set_items({"a": "1"})
        await store.set_items({"a": "2"})
        await later.wait_for_value("a", "2", TIMEOUT)
        await asyncio.sleep(0.01)
    assert seen == ["1", "2"]
    assert any(subscription_id in r.getMessage() for r in caplog.records)


async def test_slow_handler_does_not_block_writers_or_other_subscribers(make: Factory) -> None:
    store = await make()
    release = asyncio.Event()

    async def slow(update: ConfigurationUpdate) -> None:
        await release.wait()

    fast = Updates()
    await store.subscribe(SubscribeConfigurationRequest(), slow)
    await store.subscribe(SubscribeConfigurationRequest(), fast)
    try:
        await asyncio.wait_for(store.set_items({"a": "1"}), TIMEOUT)
        await fast.wait_for_value("a", "1", TIMEOUT)
    finally:
        release.set()


async def test_handler_may_unsubscribe_itself(make: Factory) -> None:
    store = await make()
    ids: list[str] = []
    done = asyncio.Event()

    async def once(update: ConfigurationUpdate) -> None:
        await store.unsubscribe(ids[0])
        done.set()

    ids.append(await store.subscribe(SubscribeConfigurationRequest(), once))
    await store.set_items({"a": "1"})
    await asyncio.wait_for(done.wait(), TIMEOUT)
    with pytest.raises(NotFoundError):
        await store.unsubscribe(ids[0])


async def test_close_ends_every_subscription(make: Factory) -> None:
    store = await make()
    updates = Updates()
    subscription_id = await store.subscribe(SubscribeConfigurationRequest(), updates)
    await store.close()
    await store.close()
    with pytest.raises(ComponentNotOpenError):
        await store.set_items({"a": "1"})
    await store.init(ComponentMetadata("config", "configuration.in-memory"))
    await store.set_items({"a": "1"})
    await asyncio.sleep(0.01)
    assert updates.received == []
    with pytest.raises(NotFoundError) as info:
        await store.unsubscribe(subscription_id)
    assert info.value.key == subscription_id
